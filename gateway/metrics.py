"""Prometheus metrics, in a registry owned by the app (no global registry)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from .proxy import Exchange

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
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
        self.incidents = Counter("gateway_leak_incidents", "Leaked-secret incidents", ["rule"], registry=r)
        self.unknown_models = Counter("gateway_unknown_model", "Responses whose model has no price", ["model"],
                                      registry=r)
        self.redis_errors = Gauge("gateway_redis_errors", "Redis errors seen by the gate", registry=r)
        self.pending_debits = Gauge("gateway_pending_debits", "Debits queued while Redis was unreachable",
                                    registry=r)
        self.writer_queue = Gauge("gateway_writer_queue_depth", "Transcripts waiting for Postgres", registry=r)
        self.spool_bytes = Gauge("gateway_spool_bytes", "Bytes in the local transcript spool", registry=r)
        self.batches = Gauge("gateway_writer_batches", "Transcript batches committed", registry=r)
        self.writer_errors = Gauge("gateway_writer_errors", "Postgres errors seen by the writer", registry=r)

    def observe_exchange(self, exchange: Exchange, ended_at: float) -> None:
        self.requests.labels(str(exchange.status), exchange.model or "").inc()
        self.duration.observe(max(0.0, ended_at - exchange.started_at))
        if exchange.first_byte_at is not None:
            self.ttfb.observe(max(0.0, exchange.first_byte_at - exchange.started_at))
        if exchange.refused:
            self.refusals.labels(exchange.refused).inc()
        u = exchange.usage
        for name, value in (("input", u.input_tokens), ("cache_write_5m", u.cache_write_5m),
                            ("cache_write_1h", u.cache_write_1h), ("cache_read", u.cache_read),
                            ("output", u.output_tokens)):
            if value:
                self.tokens.labels(name).inc(value)
        if exchange.weighted:
            self.weighted.inc(exchange.weighted)

    def unknown_model(self, model: str) -> None:
        self.unknown_models.labels(model[:64]).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
