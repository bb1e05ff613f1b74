"""The one configuration object. Read once from the environment (prefix ``GATEWAY_``); nothing else reads env."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    upstream_url: str = "https://api.anthropic.com"
    upstream_api_key: SecretStr | None = None
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_prefix: str = "gw"
    redis_timeout_s: float = 2.0  # a command, or the wait for a pooled connection
    redis_connect_timeout_s: float = 0.5  # a new connection: short, so an unreachable Redis is noticed fast
    redis_pool_size: int = 64
    database_url: str | None = None
    data_dir: Path = Path("./.gateway")
    key_secret: SecretStr | None = None
    key_issuer: str = "class-token-gateway"
    admin_token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    fail_mode: Literal["open", "closed"] = "closed"
    max_body_bytes: int = 33_554_432
    sentry_dsn: str | None = None
    alert_webhook_url: str | None = None
    course: str | None = None
    # Beyond the contract (documented in the README):
    max_inflight_per_student: int = Field(default=8, ge=1)
    upstream_connect_timeout_s: float = 10.0
    upstream_read_timeout_s: float = 600.0
    answer_quota_probe: bool = True
    shutdown_grace_s: float = 30.0
    log_level: str = "INFO"
    # Caches: memory against CPU (bench/README.md, "RSS"). Sized for a class: ~200 live sessions' messages.
    scan_cache_entries: int = Field(default=65_536, ge=64)  # texts the leak scanner remembers as scanned
    scan_cache_bytes: int = Field(default=0, ge=0)  # of which kept as text (exact hits; 0: keys only, leaks.py)
    writer_blob_cache_entries: int = Field(default=50_000, ge=0)  # content hashes known to be stored
    heap_trim_interval_s: float = 2.0  # workers hand freed heap back to the OS this often (0: never); heap.py
    contact: str = "your course convenor"

    @property
    def embedded(self) -> bool:
        return self.redis_url is None or self.database_url is None
