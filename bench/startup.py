"""Start-up time, and the keep-alive check for Nagle's algorithm meeting delayed ACKs.

Start-up: from starting the process to its port taking connections (polled every few
milliseconds), and to the first `/metrics` with every job's data (that scrape, sent as soon as
the exporter listens with a 120 s scrape timeout, waits for the start-up collection). The
simulator answers at once, so the second figure is what fetching N jobs costs at the default
concurrency of 16.

Keep-alive check: a server that writes a response in several writes without TCP_NODELAY stalls
for the peer's delayed-ACK timeout on every request of a kept-alive connection. The simulator
and the exporter (whose /metrics answer is written in parts) are timed over one connection: a
median near a millisecond or less says neither falls into it.
"""

from __future__ import annotations

import contextlib
import time

from bench import common
from bench.common import median, ms, table

POLL = 0.002


def startup_run(jobs: int) -> tuple[float, float]:
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        ids = common.bulk_job_ids(jobs)
        started = time.monotonic()
        exporter = common.start_exporter(stack, simulator, ids, wait=False)
        exporter.process.wait_listening(timeout=60, interval=POLL)
        listening = time.monotonic() - started
        with common.Scraper(exporter.port) as scraper:
            status, body, _ = scraper.get("/metrics", common.scrape_headers(gzip=False))
        served = time.monotonic() - started
        if status != 200 or common.jobs_shown(body) != jobs:
            raise RuntimeError(
                f"the first /metrics (HTTP {status}) held {common.jobs_shown(body)} of {jobs} jobs"
            )
        return listening, served


def keep_alive_check(requests: int = 200) -> list[list[object]]:
    rows: list[list[object]] = []
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, 100, latency=0.0)
        ids = common.bulk_job_ids(100)
        exporter = common.start_exporter(stack, simulator, ids)
        common.full_scrape(exporter, 100)
        sim_port = int(simulator.base_url.rsplit(":", 1)[1].split("/", 1)[0])
        job_path = f"/api/v1/jobs/{ids[0]}"
        cases = [
            ("simulator GET /api/v1/jobs/{id}", sim_port, job_path, {"X-API-Key": common.API_KEY}),
            ("exporter GET /healthz", exporter.port, "/healthz", {}),
            ("exporter GET /metrics (100 jobs)", exporter.port, "/metrics", {}),
            (
                "exporter GET /metrics (100 jobs, gzip)",
                exporter.port,
                "/metrics",
                {"Accept-Encoding": "gzip"},
            ),
        ]
        for name, port, path, headers in cases:
            times, _ = common.timed_scrapes(port, path, headers, requests, warmup=5)
            rows.append([name, requests, ms(median(times)), ms(max(times))])
    return rows


def run(sizes: list[int], runs: int) -> str:
    rows: list[list[object]] = []
    for jobs in sizes:
        got = [startup_run(jobs) for _ in range(runs)]
        rows.append([jobs, median([g[0] for g in got]), median([g[1] for g in got])])
    out = table(
        ["N", "s to listening", "s to first full /metrics"],
        rows,
        f"Start-up (median of {runs} runs; simulator answering without delay; load average "
        f"{common.load_average()} at the end)",
    )
    out += "\n" + table(
        ["keep-alive requests on one connection", "requests", "median ms", "max ms"],
        keep_alive_check(),
        "Keep-alive check (Nagle + delayed ACK would show as ~40 ms)",
    )
    return out
