"""API economy: requests made to Cerby over a window of several TTLs, against the ideal.

Time is compressed so a run takes seconds: the in-flight TTL is `ttl` seconds (60 s by default
in production), the terminal TTL 60 times that (3600 s), and the scrapers keep their proportions
to the TTL: two Prometheus-like scrapers every TTL/4 (15 s at a 60 s TTL) and a third every
TTL/12 (5 s), each starting at a random phase as Prometheus spreads its targets.

The ideal, for a window of length W from the first scrape to the last: one request per in-flight
job per TTL and one per terminal job per terminal TTL, i.e.

    in_flight x ceil(W / ttl) + terminal x ceil(W / terminal_ttl)

Requests are counted by the simulator, per job, for the tracked jobs only. The exporter starts
with no job IDs and is given them when the scrapers start, so its start-up collection is not
counted and the first scrape is the cold one (the exporter looks at its job-ID file at most
once a second: the IDs are written over a second after its start-up look, so that the first
scrape sees them).
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from dataclasses import dataclass

from bench import common
from bench.common import table

TERMINAL_FACTOR = 60
"""Terminal TTL / in-flight TTL, as 3600 s / 60 s by default."""
WINDOW_TTLS = 10
REFRESH_RATE = 100
"""In-flight jobs refreshed a second at most: the TTL is lengthened beyond that (1 000 jobs get
5 s), so that what is counted is how often the exporter asks, not how fast it can fetch while
the simulator and the scrapers share its two cores."""


@dataclass
class EconomyRun:
    scrapers: int
    scrapes: int
    window: float
    requests: int
    ideal: int
    max_per_job: int
    in_flight_per_job: float


def _scraper(
    port: int, interval: float, phase: float, start: float, stop: float, times: list[float]
) -> None:
    headers = common.scrape_headers(gzip=True, timeout=60)
    with common.Scraper(port) as scraper:
        tick = start + phase
        while tick < stop:
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            times.append(time.monotonic())
            status, _, _ = scraper.get("/metrics", headers)
            if status != 200:
                raise RuntimeError(f"scrape: HTTP {status}")
            tick += interval
            while tick < time.monotonic():  # a scrape slower than the interval skips ticks
                tick += interval


def economy_run(jobs: int, ttl: float, scrapers: int, seed: int) -> EconomyRun:
    rng = random.Random(seed)
    intervals = [ttl / 4, ttl / 4, ttl / 12][:scrapers] if scrapers <= 3 else [ttl / 4] * scrapers
    ids = common.bulk_job_ids(jobs)
    terminal_ids = set(ids[: math.ceil(jobs * 0.5)])  # the bulk scenario's finished half
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        exporter = common.start_exporter(
            stack,
            simulator,
            [],
            max_jobs=jobs,
            flags=[
                "--cache-ttl",
                f"{ttl:g}",
                "--terminal-cache-ttl",
                f"{ttl * TERMINAL_FACTOR:g}",
            ],
        )
        time.sleep(common.RELOAD_WAIT)
        before = common.requests_by_job(simulator)
        exporter.set_job_ids(ids)
        start = time.monotonic() + 0.05
        stop = start + ttl * WINDOW_TTLS
        times: list[list[float]] = [[] for _ in intervals]
        threads = [
            threading.Thread(
                target=_scraper,
                args=(exporter.port, interval, rng.uniform(0, interval), start, stop, times[n]),
                daemon=True,
            )
            for n, interval in enumerate(intervals)
        ]
        # The first scrape is at the start for everyone: one scraper has phase 0.
        threads[0] = threading.Thread(
            target=_scraper,
            args=(exporter.port, intervals[0], 0.0, start, stop, times[0]),
            daemon=True,
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(ttl * WINDOW_TTLS + 120)
        after = common.requests_by_job(simulator)
    every = sorted(t for scraper_times in times for t in scraper_times)
    window = every[-1] - every[0]
    counts = {job_id: after.get(job_id, 0) - before.get(job_id, 0) for job_id in ids}
    terminal = len(terminal_ids)
    in_flight = jobs - terminal
    ideal = in_flight * math.ceil(window / ttl) + terminal * math.ceil(
        window / (ttl * TERMINAL_FACTOR)
    )
    in_flight_counts = [n for job_id, n in counts.items() if job_id not in terminal_ids]
    return EconomyRun(
        scrapers=len(intervals),
        scrapes=len(every),
        window=window,
        requests=sum(counts.values()),
        ideal=ideal,
        max_per_job=max(counts.values(), default=0),
        in_flight_per_job=sum(in_flight_counts) / max(len(in_flight_counts), 1),
    )


def run(sizes: list[int], ttl: float, scraper_counts: list[int], seed: int = 1) -> str:
    rows: list[list[object]] = []
    for jobs in sizes:
        job_ttl = max(ttl, jobs / 2 / REFRESH_RATE)
        for scrapers in scraper_counts:
            got = economy_run(jobs, job_ttl, scrapers, seed)
            rows.append(
                [
                    f"{jobs} jobs, {got.scrapers} scraper{'s' if got.scrapers > 1 else ''}",
                    job_ttl,
                    got.window,
                    got.scrapes,
                    got.requests,
                    got.ideal,
                    got.requests / got.ideal,
                    got.max_per_job,
                    math.ceil(got.window / job_ttl),
                    got.in_flight_per_job,
                ]
            )
    return table(
        [
            "run",
            "TTL s",
            "window s",
            "scrapes",
            "requests",
            "ideal",
            "ratio",
            "max/job",
            "ideal/in-flight job",
            "mean/in-flight job",
        ],
        rows,
        f"API economy over {WINDOW_TTLS} TTLs (terminal TTL = {TERMINAL_FACTOR} x TTL; scrapers "
        f"every TTL/4, TTL/4 and TTL/12; load average {common.load_average()} at the end)",
    )
