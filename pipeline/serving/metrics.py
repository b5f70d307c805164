"""The service's figures in Prometheus' text format (``GET /metrics``): requests and errors by
route and status, a latency histogram by route, images and model calls, and the model served."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

# Upper bounds, in seconds, of the latency histogram's buckets
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters a request handler bumps; ``render`` writes them out. Thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.buckets: defaultdict[str, list[int]] = defaultdict(lambda: [0] * len(LATENCY_BUCKETS))
        self.latency_sum: Counter[str] = Counter()
        self.latency_count: Counter[str] = Counter()
        self.images = 0
        self.model_calls = 0
        self.loads = 0
        self.load_failures = 0
        self.version = 0

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route, status] += 1
            counts = self.buckets[route]
            for index, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[index] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def batch(self, images: int) -> None:
        with self._lock:
            self.images += images
            self.model_calls += 1

    def loaded(self, version: int) -> None:
        with self._lock:
            self.loads += 1
            self.version = version

    def load_failed(self) -> None:
        with self._lock:
            self.load_failures += 1

    def total(self) -> int:
        """Requests answered so far."""
        with self._lock:
            return sum(self.requests.values())

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self._lock:
            lines = _family("happysad_requests_total", "counter", "HTTP requests by route and status",
                            [(f'route="{r}",code="{c}"', n) for (r, c), n in sorted(self.requests.items())])
            errors = Counter()
            for (route, code), n in self.requests.items():
                if code >= 400:
                    errors[route] += n
            lines += _family("happysad_request_errors_total", "counter",
                             "requests answered with a 4xx or 5xx",
                             [(f'route="{r}"', n) for r, n in sorted(errors.items())])
            lines += ["# HELP happysad_request_seconds time from request to answer",
                      "# TYPE happysad_request_seconds histogram"]
            for route in sorted(self.buckets):
                for bound, count in zip(LATENCY_BUCKETS, self.buckets[route], strict=True):
                    lines.append(f'happysad_request_seconds_bucket{{route="{route}",le="{bound}"}} {count}')
                lines.append(f'happysad_request_seconds_bucket{{route="{route}",le="+Inf"}} '
                             f"{self.latency_count[route]}")
                lines.append(f'happysad_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}')
                lines.append(f'happysad_request_seconds_count{{route="{route}"}} {self.latency_count[route]}')
            lines += _family("happysad_images_total", "counter", "images labelled", [("", self.images)])
            lines += _family("happysad_model_calls_total", "counter",
                             "model calls (a batch of images each)", [("", self.model_calls)])
            lines += _family("happysad_model_loads_total", "counter", "models loaded (the first, then "
                             "each swap)", [("", self.loads)])
            lines += _family("happysad_model_load_failures_total", "counter",
                             "new models that could not be loaded (the old one kept serving)",
                             [("", self.load_failures)])
            lines += _family("happysad_model_version", "gauge", "version of the model being served",
                             [("", self.version)])
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, int | float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{{{labels}}} {value}" if labels else f"{name} {value}" for labels, value in samples]
    return lines
