"""What ``GET /metrics`` serves, through ``prometheus_client``: each server's own registry (two servers in one
process never share counts), exposed in Prometheus' text format."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


class Metrics:
    """Requests by endpoint and status code, errors (4xx and 5xx) by code, request latency, clips per model call,
    queue depth and upload slots taken. ``queue_depth`` and ``uploads`` are read at each scrape."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_depth: Callable[[], int] = lambda: 0
        self.uploads: Callable[[], int] = lambda: 0
        r = self.registry
        self.requests = Counter(
            "timesformer_requests", "Requests by endpoint and status code.", ["path", "code"], registry=r
        )
        self.errors = Counter("timesformer_errors", "Requests answered with a 4xx or 5xx status.", ["code"], registry=r)
        self.latency = Histogram("timesformer_request_seconds", "Request latency.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram(
            "timesformer_batch_clips", "Clips per model call.", buckets=range(1, max_batch + 1), registry=r
        )
        Gauge("timesformer_queue_depth", "Requests waiting for the model.", registry=r).set_function(
            lambda: self.queue_depth()
        )
        Gauge(
            "timesformer_upload_slots_taken",
            "Uploads in flight, their threads' unfinished work included.",
            registry=r,
        ).set_function(lambda: self.uploads())

    def request(self, path: str, status: int, seconds: float):
        self.requests.labels(path=path, code=str(status)).inc()
        if status >= 400:
            self.errors.labels(code=str(status)).inc()
        self.latency.observe(seconds)

    def batch_size(self, clips: int):
        self.batch.observe(clips)

    def render(self) -> str:
        return generate_latest(_WithoutCreated(self.registry)).decode()


class _WithoutCreated:
    """A registry's metrics as the service always wrote them: without the ``*_created`` timestamps prometheus_client
    adds to counters and histograms (``disable_created_metrics()`` would change every registry in the process), and
    with bucket bounds written ``le="1"``, not the library's ``le="1.0"`` (another label value: another series)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():
            family.samples = [
                s._replace(labels={**s.labels, "le": _bound(s.labels["le"])}) if "le" in s.labels else s
                for s in family.samples
                if not s.name.endswith("_created")
            ]
            yield family


def _bound(le: str) -> str:
    return le if le == "+Inf" else f"{float(le):g}"
