"""Counters and histograms in Prometheus' text format (what ``GET /metrics`` serves), thread-safe."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket (+Inf only)
        self.total, self.count = 0.0, 0

    def observe(self, value: float):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.total:.6f}",
            f"{name}_count {self.count}",
        ]
        return out


class Metrics:
    """Requests and errors by endpoint and status code, request latency, batch sizes, queue depth and upload slots
    taken."""

    def __init__(self, max_batch: int):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # (path, status code) -> n
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(range(1, max_batch + 1))
        self.queue_depth = lambda: 0
        self.uploads = lambda: 0

    def request(self, path: str, status: int, seconds: float):
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.observe(seconds)

    def batch_size(self, clips: int):
        with self._lock:
            self.batch.observe(clips)

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP timesformer_requests_total Requests by endpoint and status code.",
                "# TYPE timesformer_requests_total counter",
            ]
            lines += [
                f'timesformer_requests_total{{path="{p}",code="{c}"}} {n}'
                for (p, c), n in sorted(self.requests.items())
            ]
            lines += [
                "# HELP timesformer_errors_total Requests answered with a 4xx or 5xx status.",
                "# TYPE timesformer_errors_total counter",
            ]
            errors = Counter()
            for (_, code), n in self.requests.items():
                if code >= 400:
                    errors[code] += n
            lines += [f'timesformer_errors_total{{code="{c}"}} {n}' for c, n in sorted(errors.items())]
            lines += [
                "# HELP timesformer_request_seconds Request latency.",
                "# TYPE timesformer_request_seconds histogram",
                *self.latency.lines("timesformer_request_seconds"),
            ]
            lines += [
                "# HELP timesformer_batch_clips Clips per model call.",
                "# TYPE timesformer_batch_clips histogram",
                *self.batch.lines("timesformer_batch_clips"),
            ]
            lines += [
                "# HELP timesformer_queue_depth Requests waiting for the model.",
                "# TYPE timesformer_queue_depth gauge",
                f"timesformer_queue_depth {self.queue_depth()}",
                "# HELP timesformer_upload_slots_taken Uploads in flight, their threads' unfinished work included.",
                "# TYPE timesformer_upload_slots_taken gauge",
                f"timesformer_upload_slots_taken {self.uploads()}",
            ]
        return "\n".join(lines) + "\n"
