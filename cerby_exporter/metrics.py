"""The exporter's own counters and histogram: how it talks to Cerby and how its cache fares.

Kept as plain thread-safe numbers behind a custom collector rather than prometheus_client's
Counter objects, so that no `_created` series double the output and nothing global is touched.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

FETCH_ERROR_REASONS: Final = (
    "not_found",
    "unauthorized",
    "rate_limited",
    "server_error",
    "timeout",
    "transport",
    "invalid_response",
)
CACHE_RESULTS: Final = ("hit", "miss", "stale")
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ExporterMetrics:
    """Counters the client and the cache add to; the collector reads them at scrape time.

    Yields (values illustrative)::

        # HELP cerby_api_requests_total HTTP responses from the Cerby API, by status code.
        # TYPE cerby_api_requests_total counter
        cerby_api_requests_total{code="200"} 20.0
        # HELP cerby_api_request_duration_seconds Time from sending a request to Cerby ...
        # TYPE cerby_api_request_duration_seconds histogram
        cerby_api_request_duration_seconds_bucket{le="0.005"} 3.0
        ...
        cerby_api_request_duration_seconds_count 20.0
        cerby_api_request_duration_seconds_sum 0.42
        # HELP cerby_job_fetch_errors_total Failed job fetches, by reason.
        # TYPE cerby_job_fetch_errors_total counter
        cerby_job_fetch_errors_total{reason="not_found"} 1.0
        ...
        # HELP cerby_cache_requests_total Job lookups in the cache, by result.
        # TYPE cerby_cache_requests_total counter
        cerby_cache_requests_total{result="hit"} 40.0
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: Counter[str] = Counter()
        self._errors: Counter[str] = Counter(dict.fromkeys(FETCH_ERROR_REASONS, 0))
        self._cache: Counter[str] = Counter(dict.fromkeys(CACHE_RESULTS, 0))
        self._bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0

    def observe_response(self, code: int, seconds: float) -> None:
        with self._lock:
            self._responses[str(code)] += 1
            self._observe(seconds)

    def observe_failed_request(self, seconds: float) -> None:
        """A request that got no response (timeout, reset): timed, but it has no code."""
        with self._lock:
            self._observe(seconds)

    def _observe(self, seconds: float) -> None:
        self._bucket_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._duration_sum += seconds

    def count_fetch_error(self, reason: str) -> None:
        with self._lock:
            self._errors[reason] += 1

    def count_cache(self, hits: int, misses: int, stale: int) -> None:
        with self._lock:
            self._cache["hit"] += hits
            self._cache["miss"] += misses
            self._cache["stale"] += stale

    def fetch_errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def responses(self) -> dict[str, int]:
        with self._lock:
            return dict(self._responses)

    def cache_results(self) -> dict[str, int]:
        with self._lock:
            return dict(self._cache)

    def describe(self) -> list[Metric]:
        """Declared so that registering this collector does not call `collect()`."""
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            responses = sorted(self._responses.items(), key=lambda item: int(item[0]))
            errors = list(self._errors.items())
            cache = list(self._cache.items())
            counts = list(self._bucket_counts)
            total = self._duration_sum
        requests = CounterMetricFamily(
            "cerby_api_requests",
            "HTTP responses from the Cerby API, by status code (requests that got none are in "
            "cerby_job_fetch_errors_total).",
            labels=["code"],
        )
        for code, value in responses:
            requests.add_metric([code], value)
        yield requests

        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, DURATION_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        yield HistogramMetricFamily(
            "cerby_api_request_duration_seconds",
            "Time from sending a request to Cerby to reading its whole answer.",
            buckets=buckets,
            sum_value=total,
        )

        fetch_errors = CounterMetricFamily(
            "cerby_job_fetch_errors",
            "Failed job fetches, by reason: not_found, unauthorized (401/403), rate_limited, "
            "server_error (5xx), timeout, transport, invalid_response.",
            labels=["reason"],
        )
        for reason, value in errors:
            fetch_errors.add_metric([reason], value)
        yield fetch_errors

        lookups = CounterMetricFamily(
            "cerby_cache_requests",
            "Job lookups in the cache, by result: hit (fresh), stale (expired, refreshed), "
            "miss (no data yet).",
            labels=["result"],
        )
        for result, value in cache:
            lookups.add_metric([result], value)
        yield lookups
