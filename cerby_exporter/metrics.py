"""The exporter's own counters and histogram: how it talks to Cerby and how its cache fares.

Kept as plain numbers behind a custom collector, which prometheus_client renders, rather than
its Counter objects: no `_created` series double the output, and no global registry is touched.
Every change happens on the event loop, so the numbers need no lock.
"""

from __future__ import annotations

import bisect
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
_BOUNDS: Final = (*map(str, DURATION_BUCKETS), "+Inf")

REQUESTS: Final = "cerby_api_requests"
REQUESTS_HELP: Final = (
    "HTTP responses from the Cerby API, by status code (requests that got none are in "
    "cerby_job_fetch_errors_total)."
)
DURATION: Final = "cerby_api_request_duration_seconds"
DURATION_HELP: Final = "Time from sending a request to Cerby to reading its whole answer."
FETCH_ERRORS: Final = "cerby_job_fetch_errors"
FETCH_ERRORS_HELP: Final = (
    "Failed job fetches, by reason: not_found, unauthorized (401/403), rate_limited, "
    "server_error (5xx), timeout, transport, invalid_response."
)
CACHE_REQUESTS: Final = "cerby_cache_requests"
CACHE_REQUESTS_HELP: Final = (
    "Job lookups in the cache, by result: hit (fresh), stale (expired, refreshed), "
    "miss (no data yet)."
)


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
        self._responses: Counter[str] = Counter()
        self._errors: Counter[str] = Counter(dict.fromkeys(FETCH_ERROR_REASONS, 0))
        self._cache: Counter[str] = Counter(dict.fromkeys(CACHE_RESULTS, 0))
        self._bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0

    def observe_response(self, code: int, seconds: float) -> None:
        self._responses[str(code)] += 1
        self._observe(seconds)

    def observe_failed_request(self, seconds: float) -> None:
        """A request that got no response (timeout, reset): timed, but it has no code."""
        self._observe(seconds)

    def _observe(self, seconds: float) -> None:
        self._bucket_counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self._duration_sum += seconds

    def count_fetch_error(self, reason: str) -> None:
        self._errors[reason] += 1

    def count_cache(self, hits: int, misses: int, stale: int) -> None:
        self._cache["hit"] += hits
        self._cache["miss"] += misses
        self._cache["stale"] += stale

    def fetch_errors(self) -> dict[str, int]:
        return dict(self._errors)

    def responses(self) -> dict[str, int]:
        return dict(self._responses)

    def cache_results(self) -> dict[str, int]:
        return dict(self._cache)

    def describe(self) -> list[Metric]:
        """Declared so that registering this collector does not call `collect()`."""
        return []

    def _snapshot(
        self,
    ) -> tuple[
        list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]], list[int], float
    ]:
        """Every number at one instant, each histogram bucket counted cumulatively."""
        responses = sorted(self._responses.items(), key=lambda item: int(item[0]))
        errors = list(self._errors.items())
        cache = list(self._cache.items())
        counts = list(self._bucket_counts)
        total = self._duration_sum
        for n in range(1, len(counts)):
            counts[n] += counts[n - 1]
        return responses, errors, cache, counts, total

    def collect(self) -> Iterator[Metric]:
        """The numbers as prometheus_client families, for the exporter's registry."""
        responses, errors, cache, counts, total = self._snapshot()
        requests = CounterMetricFamily(REQUESTS, REQUESTS_HELP, labels=["code"])
        for code, value in responses:
            requests.add_metric([code], value)
        yield requests
        yield HistogramMetricFamily(
            DURATION,
            DURATION_HELP,
            buckets=[(bound, float(n)) for bound, n in zip(_BOUNDS, counts, strict=True)],
            sum_value=total,
        )
        fetch_errors = CounterMetricFamily(FETCH_ERRORS, FETCH_ERRORS_HELP, labels=["reason"])
        for reason, value in errors:
            fetch_errors.add_metric([reason], value)
        yield fetch_errors
        lookups = CounterMetricFamily(CACHE_REQUESTS, CACHE_REQUESTS_HELP, labels=["result"])
        for result, value in cache:
            lookups.add_metric([result], value)
        yield lookups
