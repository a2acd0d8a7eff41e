"""Cold scrapes: every job fetched within one scrape, against the ideal bound.

The ideal: with `concurrency` requests in flight and each answered after `latency`, N jobs take
at least ceil(N / concurrency) x latency. Each run starts a fresh simulator and exporter with no
job IDs, waits until it is ready, then writes the N IDs to its job-ID file and times the next
scrape (sent with a 120 s scrape timeout): that scrape loads the IDs and fetches all N jobs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from bench import common
from bench.common import median, table


@dataclass
class ColdRun:
    seconds: float
    requests: int
    jobs_shown: int


def cold_run(jobs: int, latency: float, concurrency: int, status_series: str) -> ColdRun:
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency)
        exporter = common.start_exporter(
            stack,
            simulator.base_url,
            [],
            max_jobs=jobs,
            flags=["--max-concurrency", str(concurrency), "--status-series", status_series],
        )
        before = simulator.requests()
        exporter.set_job_ids(common.bulk_job_ids(jobs))
        with common.Scraper(exporter.port) as scraper:
            status, body, seconds = scraper.get("/metrics", common.scrape_headers(gzip=True))
        if status != 200:
            raise RuntimeError(f"cold scrape: HTTP {status}")
        import gzip

        text = gzip.decompress(body)
        shown = text.count(b"\ncerby_job_info{")
        return ColdRun(seconds, simulator.requests() - before, shown)


def run(sizes: list[int], runs: int, latency: float, concurrency: int, status_series: str) -> str:
    rows: list[list[object]] = []
    for jobs in sizes:
        ideal = math.ceil(jobs / concurrency) * latency
        got = [cold_run(jobs, latency, concurrency, status_series) for _ in range(runs)]
        rows.append(
            [
                jobs,
                ideal,
                median([r.seconds for r in got]),
                median([r.seconds / ideal for r in got]) if ideal > 0 else float("nan"),
                min(r.seconds for r in got),
                max(r.seconds for r in got),
                median([r.requests for r in got]),
                min(r.jobs_shown for r in got),
            ]
        )
    return table(
        [
            "N",
            "ideal s",
            "median s",
            "x ideal",
            "min s",
            "max s",
            "API requests",
            "jobs shown",
        ],
        rows,
        f"Cold scrape at {latency * 1000:g} ms simulated latency, concurrency {concurrency} "
        f"({runs} runs; ideal = ceil(N / {concurrency}) x {latency * 1000:g} ms)",
    )
