"""The service's Prometheus metrics (docs/service.md, Metrics): prefix ``ragturbo_``, seconds.

One ``Metrics`` object per app with its own registry, so several apps (tests) never
collide and ``/metrics`` shows exactly this service. Buckets come from service.buckets.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from service.buckets import (
    BATCH_SIZE_BUCKETS,
    QUEUE_BUCKETS,
    REQUEST_BUCKETS,
    SCORE_BUCKETS,
    STAGE_BUCKETS,
)

STAGES: tuple[str, ...] = ("text", "retrieval", "unet", "vae", "encode")
REJECT_REASONS: tuple[str, ...] = (
    "queue_full",
    "timeout",
    "disconnected",
    "unauthorized",
    "too_large",
    "not_ready",
    "invalid",
    "drain_timeout",
    "engine_failed",
)


class Metrics:
    """All service metrics on one registry; names exactly as docs/service.md."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        # No `*_created` series (a timestamp per counter/histogram child, which no dashboard
        # reads): prometheus_client's switch is process-wide and read as metrics are made.
        disable_created_metrics()
        r = self.registry = CollectorRegistry(auto_describe=True)
        # process_resident_memory_bytes etc.: the soak test and the dashboard read them.
        ProcessCollector(registry=r)
        self.requests = Counter(
            "ragturbo_requests", "HTTP requests by route and status code.", ["route", "status"],
            registry=r,
        )
        self.request_duration = self._histogram(
            "request_duration_seconds", "HTTP request latency, arrival to response.",
            REQUEST_BUCKETS, "route",
        )
        self.queue_wait = self._histogram(
            "queue_wait_seconds", "Time a request waited before its batch started.", QUEUE_BUCKETS
        )
        self.stage_duration = self._histogram(
            "stage_duration_seconds", "Pipeline stage time per batch (encode: per request).",
            STAGE_BUCKETS, "stage",
        )
        self.batch_size = self._histogram(
            "batch_size", "Real images per pipeline call (padding excluded).", BATCH_SIZE_BUCKETS
        )
        self.queue_depth = Gauge(
            "ragturbo_queue_depth", "Requests admitted and waiting for the pipeline.", registry=r
        )
        self.rejected = Counter(
            "ragturbo_rejected", "Requests refused or dropped, by reason.", ["reason"], registry=r
        )
        self.retrieval_score = self._histogram(
            "retrieval_score", "Cosine score of each retrieved neighbour.", SCORE_BUCKETS
        )
        self.retrieval_unavailable = self._counter(
            "retrieval_unavailable", "Requests served without retrieval because it was down."
        )
        self.retrieval_weak = self._counter(
            "retrieval_weak", "Requests whose neighbours all scored below min_score (none used)."
        )
        self.unknown_words = self._counter(
            "unknown_word_requests",
            "Requests whose prompt holds a word outside the model's vocabulary.",
        )
        self.retrieval_available = Gauge(
            "ragturbo_retrieval_available",
            "1 when the retrieval index is usable, 0 while degraded (see /readyz).",
            registry=r,
        )
        self.images_generated = self._counter("images_generated", "Images returned to clients.")
        self.build_info = Gauge(
            "ragturbo_build_info",
            "Version, runtime backend and model of this process.",
            ["version", "backend", "model"],
            registry=r,
        )
        # Pre-create label sets so dashboards see zeros instead of missing series.
        for stage in STAGES:
            self.stage_duration.labels(stage=stage)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)

    def _histogram(
        self, name: str, doc: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(f"ragturbo_{name}", doc, labels, buckets=buckets, registry=self.registry)

    def _counter(self, name: str, doc: str) -> Counter:
        return Counter(f"ragturbo_{name}", doc, registry=self.registry)

    def set_build_info(self, version: str, backend: str, model: str) -> None:
        self.build_info.clear()
        self.build_info.labels(version=version, backend=backend, model=model).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
