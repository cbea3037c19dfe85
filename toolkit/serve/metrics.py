"""Prometheus metrics of one server, in its own `CollectorRegistry` (never the process-wide default).

``edge_requests_total{model,version,code}``        inference requests answered, by HTTP status
``edge_request_errors_total{model,version,code}``  the ones that were not 200
``edge_request_duration_seconds{model,version}``   latency from request to response (histogram)
``edge_batch_size{model,version}``                 rows per batch run (histogram; > 1 when batching merged)
``edge_batch_requests{model,version}``             requests merged per batch run (histogram)
``edge_batch_duration_seconds{model,version}``     time a batch spent on its worker thread (histogram)
``edge_queue_depth{model,version}``                requests waiting for a batch (gauge)
``edge_abandoned_rows_total{model}``               generation rows dropped because their client left
``edge_timed_out_rows_total{model}``               generation rows dropped because --timeout-ms passed (504)

A raw model and its ``-text`` model share an engine, so batch and queue series carry the raw model's name;
the decoding models of encoder-decoders (``-audio``, text-to-text ``-text``) have their own engine and name.
Requests for models that do not exist are counted under model ``(unknown)``, keeping label values bounded.
"""

from __future__ import annotations

__all__ = ["UNKNOWN_MODEL", "ServeMetrics"]

UNKNOWN_MODEL = "(unknown)"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    """The server's counters, histograms and gauges; also the batchers' `BatchObserver`."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "edge_requests", "Inference requests answered, by HTTP status code.", (*labels, "code"),
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "edge_request_errors", "Inference requests answered with an error status.", (*labels, "code"),
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "edge_request_duration_seconds", "Inference request latency, request to response.", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "edge_batch_size", "Rows per batch run.", labels, buckets=_SIZE_BUCKETS, registry=self.registry
        )
        self.batch_requests = Histogram(
            "edge_batch_requests", "Requests merged per batch run.", labels, buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_latency = Histogram(
            "edge_batch_duration_seconds", "Time a batch spent running on its worker thread.", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.abandoned_rows = Counter(
            "edge_abandoned_rows", "Generation requests dropped before their end because their client left.",
            ("model",), registry=self.registry,
        )  # fmt: skip
        self.timed_out_rows = Counter(
            "edge_timed_out_rows", "Generation requests dropped before their end because --timeout-ms passed.",
            ("model",), registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "edge_queue_depth", "Requests waiting for a batch.", labels, registry=self.registry
        )

    def observe_request(self, model: str, version: str, code: int, seconds: float) -> None:
        """Count one answered inference request and its latency."""
        self.requests.labels(model, version, str(code)).inc()
        if code != 200:
            self.errors.labels(model, version, str(code)).inc()
        self.latency.labels(model, version).observe(seconds)

    def observe_timed_out(self, model: str, rows: int) -> None:
        """Count generation rows dropped from (or before) their batch because their deadline passed."""
        if rows:
            self.timed_out_rows.labels(model).inc(rows)

    def observe_abandoned(self, model: str, rows: int) -> None:
        """Count generation rows dropped from (or before) their batch because their clients left."""
        self.abandoned_rows.labels(model).inc(rows)

    def on_batch(self, label: tuple[str, str], rows: int, requests: int, seconds: float) -> None:
        """Record one batch run."""
        self.batch_size.labels(*label).observe(rows)
        self.batch_requests.labels(*label).observe(requests)
        self.batch_latency.labels(*label).observe(seconds)

    def on_depth(self, label: tuple[str, str], depth: int) -> None:
        """Set a model's queue depth."""
        self.queue_depth.labels(*label).set(depth)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def __repr__(self) -> str:
        return f"ServeMetrics(registry={self.registry!r})"
