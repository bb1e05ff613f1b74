"""Prometheus metrics, in a registry owned by the app (no global registry).

With ``gateway serve --workers N`` a scrape reaches one worker, so the workers share their numbers through
prometheus_client's multiprocess mode: the supervisor (``serve.py``) makes a fresh directory, names it in
``PROMETHEUS_MULTIPROC_DIR`` before it starts the workers (prometheus_client reads that variable when it is
imported, in each worker), and each worker's app renders every worker's files (``multiprocess_dir``).
Counters and histograms add up across workers (dead ones included); gauges are summed over live workers.

Gauges and the totals other components keep themselves (the writer's batches, errors) are copied in by
:meth:`Metrics.sync`, which the app runs every second and before each scrape.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from .proxy import Exchange

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TOKEN_TYPES = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True, slots=True)
class Readings:
    """What the writer and the gate report about themselves, at one moment."""

    writer_queue: int = 0
    spool_bytes: int = 0
    batches_written: int = 0
    records_written: int = 0
    writer_errors: int = 0
    records_rejected: int = 0
    pending_debits: int = 0


def multiprocess_values() -> bool:
    """Whether prometheus_client was imported in multiprocess mode (values kept in shared files)."""
    return bool(values.ValueClass.__name__ != "MutexValue")


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is not None and not multiprocess_values():
            raise RuntimeError(f"{MULTIPROC_ENV} must be set before prometheus_client is imported")
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("gateway_requests", "Metered requests by status and model", ["status", "model"],
                                registry=r)
        self.ttfb = Histogram("gateway_ttfb_seconds", "Time to first upstream byte", buckets=_LATENCY_BUCKETS,
                              registry=r)
        self.duration = Histogram("gateway_request_duration_seconds", "Request duration", buckets=_LATENCY_BUCKETS,
                                  registry=r)
        self.tokens = Counter("gateway_tokens", "Tokens metered by type", ["type"], registry=r)
        self.weighted = Counter("gateway_weighted_tokens", "Weighted tokens debited", registry=r)
        self.refusals = Counter("gateway_refusals", "Requests refused by the gateway, by reason", ["reason"],
                                registry=r)
        self.rate_limited = Counter("gateway_rate_limited", "429s sent by the gate, by reason (quota, inflight)",
                                    ["reason"], registry=r)
        self.incidents = Counter("gateway_leak_incidents", "Leaked-secret incidents", ["rule"], registry=r)
        self.unknown_models = Counter("gateway_unknown_model", "Responses whose model has no price", ["model"],
                                      registry=r)
        self.redis_errors = Counter("gateway_redis_errors", "Redis calls that failed (unreachable, timeout)",
                                    ["op"], registry=r)
        self.postgres_errors = Counter("gateway_postgres_errors", "Postgres operations that failed, by component",
                                       ["component"], registry=r)
        self.fail_mode = Counter("gateway_redis_down_requests", "Requests met while Redis was unreachable, by the "
                                 "fail mode applied (closed: 529, open: served unmetered until replay)", ["mode"],
                                 registry=r)
        self.debits_queued = Counter("gateway_debits_queued", "Debits queued while Redis was unreachable",
                                     registry=r)
        self.debits_replayed = Counter("gateway_debits_replayed", "Queued debits replayed to Redis", registry=r)
        self.pending_debits = Gauge("gateway_pending_debits", "Debits waiting for Redis", registry=r,
                                    multiprocess_mode="livesum")
        self.writer_queue = Gauge("gateway_writer_queue_depth", "Transcripts waiting for Postgres", registry=r,
                                  multiprocess_mode="livesum")
        self.spool_bytes = Gauge("gateway_spool_bytes", "Bytes in the local transcript spool not yet in Postgres",
                                 registry=r, multiprocess_mode="livesum")
        self.batches = Counter("gateway_writer_batches", "Transcript batches committed to Postgres", registry=r)
        self.records = Counter("gateway_writer_records", "Transcripts committed to Postgres", registry=r)
        self.rejected = Counter("gateway_writer_rejected", "Transcripts Postgres refused as bad data (kept aside)",
                                registry=r)
        self._last = Readings()
        # Known label values start at 0, so that every series exists (and rate() works) before its first event.
        for counter, labels in ((self.rate_limited, ("quota", "inflight")), (self.fail_mode, ("open", "closed")),
                                (self.refusals, ("quota", "permission")),
                                (self.postgres_errors, ("writer", "policy")),
                                (self.redis_errors, ("reserve", "settle", "replay", "key_status")),
                                (self.tokens, TOKEN_TYPES)):
            for label in labels:
                counter.labels(label)

    def observe_exchange(self, exchange: Exchange, ended_at: float) -> None:
        self.requests.labels(str(exchange.status), exchange.model or "").inc()
        self.duration.observe(max(0.0, ended_at - exchange.started_at))
        if exchange.first_byte_at is not None:
            self.ttfb.observe(max(0.0, exchange.first_byte_at - exchange.started_at))
        if exchange.refused:
            self.refusals.labels(exchange.refused).inc()
        u = exchange.usage
        counts = (u.input_tokens, u.cache_write_5m, u.cache_write_1h, u.cache_read, u.output_tokens)
        for name, value in zip(TOKEN_TYPES, counts, strict=True):
            if value:
                self.tokens.labels(name).inc(value)
        if exchange.weighted:
            self.weighted.inc(exchange.weighted)

    def unknown_model(self, model: str) -> None:
        self.unknown_models.labels(model[:64]).inc()

    def sync(self, now: Readings) -> None:
        """Copy gauges, and advance counters by what the components counted since the last sync."""
        self.writer_queue.set(now.writer_queue)
        self.spool_bytes.set(now.spool_bytes)
        self.pending_debits.set(now.pending_debits)
        last = self._last
        for counter, before, after in ((self.batches, last.batches_written, now.batches_written),
                                       (self.records, last.records_written, now.records_written),
                                       (self.rejected, last.records_rejected, now.records_rejected),
                                       (self.postgres_errors.labels("writer"), last.writer_errors,
                                        now.writer_errors)):
            if after > before:
                counter.inc(after - before)
        self._last = now

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry)
