"""Start-up time, and the keep-alive check for Nagle's algorithm meeting delayed ACKs.

Start-up: from starting the process to `/healthz` answering (listening), and to the first
`/metrics` with every job's data (that scrape, sent as soon as the exporter listens, waits for
the start-up collection). The simulator answers at once, so the second figure is what fetching
N jobs costs at the default concurrency of 16.

Keep-alive check: a server that writes a response's headers and body in separate writes, without
TCP_NODELAY, stalls ~40 ms per request on a kept-alive connection. Both servers here are timed
over one connection: a median near a millisecond or less says neither falls into it.
"""

from __future__ import annotations

import contextlib
import time

from bench import common
from bench.common import median, ms, table


def startup_run(jobs: int) -> tuple[float, float]:
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        ids = common.bulk_job_ids(jobs)
        started = time.monotonic()
        exporter = common.start_exporter(
            stack,
            simulator.base_url,
            ids,
            flags=["--scrape-timeout", "120"],
            wait_listening=False,
        )
        common.wait_http(exporter.port, "/healthz", exporter.child)
        listening = time.monotonic() - started
        with common.Scraper(exporter.port) as scraper:
            status, body, _ = scraper.get("/metrics", common.scrape_headers(gzip=False))
        served = time.monotonic() - started
        if status != 200 or body.count(b"\ncerby_job_info{") != jobs:
            raise RuntimeError("the first /metrics did not hold every job")
        return listening, served


def keep_alive_check(requests: int = 200) -> list[list[object]]:
    rows: list[list[object]] = []
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, 100, latency=0.0)
        ids = common.bulk_job_ids(100)
        exporter = common.start_exporter(stack, simulator.base_url, ids)
        sim_port = int(simulator.base_url.rsplit(":", 1)[1].split("/", 1)[0])
        job_path = f"/api/v1/jobs/{ids[0]}"
        cases = [
            ("simulator GET /api/v1/jobs/{id}", sim_port, job_path, {"X-API-Key": common.API_KEY}),
            ("exporter GET /healthz", exporter.port, "/healthz", {}),
            ("exporter GET /metrics (100 jobs)", exporter.port, "/metrics", {}),
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
        f"Start-up (median of {runs} runs; simulator answering without delay)",
    )
    out += "\n" + table(
        ["keep-alive requests on one connection", "requests", "median ms", "max ms"],
        keep_alive_check(),
        "Keep-alive check (Nagle + delayed ACK would show as ~40 ms)",
    )
    return out
