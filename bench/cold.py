"""Cold scrapes: every job fetched within one scrape, against a plain threaded client and the
ideal bound.

The ideal: with `concurrency` requests in flight and each answered after `latency`, N jobs take
at least ceil(N / concurrency) x latency. The reference is what a plain program does: one
`httpx.Client` shared by `concurrency` threads, fetching the same N jobs from the same simulator
and parsing each answer's JSON.

Each run starts a fresh simulator and an exporter with no job IDs, and once it is ready, back
to back: the threaded client fetches the N jobs, then the N IDs are written to the exporter's
job-ID file and the next scrape (sent with a 120 s scrape timeout) is timed: it loads the IDs
and fetches every job. The ratio to the threaded client is taken within the run.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from bench import common
from bench.common import median, table


@dataclass
class ColdRun:
    seconds: float
    threaded: float
    cpu: float
    """CPU seconds the exporter spent during the cold scrape."""
    requests: int
    jobs_shown: int


def threaded_fetch(base_url: str, job_ids: list[str], concurrency: int) -> float:
    """Seconds for `concurrency` threads sharing one httpx.Client to fetch every job."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"X-API-Key": common.API_KEY, "Accept": "application/json"}
    with httpx.Client(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:

        def fetch(job_id: str) -> None:
            response = client.get(f"{base_url}/jobs/{job_id}")
            response.raise_for_status()
            response.json()

        with ThreadPoolExecutor(concurrency) as pool:
            started = time.perf_counter()
            list(pool.map(fetch, job_ids))
            return time.perf_counter() - started


def cold_run(jobs: int, latency: float, concurrency: int, status_series: str) -> ColdRun:
    ids = common.bulk_job_ids(jobs)
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency)
        exporter = common.start_exporter(
            stack,
            simulator,
            [],
            max_jobs=jobs,
            flags=["--max-concurrency", str(concurrency), "--status-series", status_series],
        )
        time.sleep(common.RELOAD_WAIT)
        threaded = threaded_fetch(simulator.base_url, ids, concurrency)
        before = common.api_requests(simulator)
        cpu_before = exporter.cpu_seconds()
        exporter.set_job_ids(ids)
        with common.Scraper(exporter.port) as scraper:
            status, body, seconds = scraper.get("/metrics", common.scrape_headers(gzip=True))
        if status != 200:
            raise RuntimeError(f"cold scrape: HTTP {status}")
        cpu = exporter.cpu_seconds() - cpu_before
        requests = common.api_requests(simulator) - before
        shown = common.jobs_shown(gzip.decompress(body))
        return ColdRun(seconds, threaded, cpu, requests, shown)


def run(sizes: list[int], runs: int, latency: float, concurrency: int, status_series: str) -> str:
    rows: list[list[object]] = []
    for jobs in sizes:
        ideal = math.ceil(jobs / concurrency) * latency
        got = [cold_run(jobs, latency, concurrency, status_series) for _ in range(runs)]
        rows.append(
            [
                jobs,
                ideal,
                median([r.threaded for r in got]),
                median([r.seconds for r in got]),
                median([r.seconds / r.threaded for r in got]),
                median([r.seconds / ideal for r in got]) if ideal > 0 else float("nan"),
                min(r.seconds for r in got),
                max(r.seconds for r in got),
                median([r.cpu / r.requests * 1000 for r in got]),
                median([r.requests for r in got]),
                min(r.jobs_shown for r in got),
            ]
        )
    return table(
        [
            "N",
            "ideal s",
            "threaded httpx s",
            "exporter s",
            "x threaded",
            "x ideal",
            "min s",
            "max s",
            "exporter CPU ms/job",
            "API requests",
            "jobs shown",
        ],
        rows,
        f"Cold scrape, {status_series} status series, at {latency * 1000:g} ms simulated latency, "
        f"{concurrency} wide (median of {runs} runs; ideal = ceil(N / {concurrency}) x "
        f"{latency * 1000:g} ms; threaded httpx = {concurrency} threads sharing one "
        f"httpx.Client; load average {common.load_average()} at the end)",
    )
