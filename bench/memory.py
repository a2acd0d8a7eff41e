"""Resident memory of the exporter after warm-up and over a period of scraping.

The exporter runs with its default TTLs (60 s in flight, 3600 s terminal) against the simulator's
`bulk` scenario (half the jobs finished, half running, so the running half is refetched every
minute and the job part rendered again), scraped as Prometheus would: two scrapers every 15 s and
a third every 5 s, gzip. VmRSS is read from /proc every `sample_every` seconds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

from bench import common
from bench.common import table

INTERVALS = (15.0, 15.0, 5.0)


@dataclass
class MemoryRun:
    jobs: int
    mode: str
    duration: float
    after_warm_up: float
    at_end: float
    peak: float
    scrapes: int
    requests: int
    samples: list[tuple[float, float]] = field(default_factory=list)


def _scrape_loop(
    port: int, interval: float, phase: float, stop: threading.Event, count: list[int]
) -> None:
    headers = common.scrape_headers(gzip=True, timeout=60)
    with common.Scraper(port) as scraper:
        next_at = time.monotonic() + phase
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            scraper.get("/metrics", headers)
            count[0] += 1
            next_at += interval
            while next_at < time.monotonic():
                next_at += interval


def memory_run(jobs: int, mode: str, duration: float, sample_every: float = 10.0) -> MemoryRun:
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        exporter = common.start_exporter(
            stack,
            simulator.base_url,
            common.bulk_job_ids(jobs),
            flags=["--status-series", mode, "--scrape-timeout", "120"],
        )
        # Warm-up: a complete scrape (it waits for any job the start-up round left), then two.
        common.timed_scrapes(exporter.port, "/metrics", common.scrape_headers(gzip=True), 2, 1)
        after_warm_up = exporter.rss_mib()
        requests_before = simulator.requests()
        stop = threading.Event()
        counts = [[0] for _ in INTERVALS]
        threads = [
            threading.Thread(
                target=_scrape_loop,
                args=(exporter.port, interval, n * 1.7, stop, counts[n]),
                daemon=True,
            )
            for n, interval in enumerate(INTERVALS)
        ]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        samples = [(0.0, after_warm_up)]
        try:
            while (elapsed := time.monotonic() - started) < duration:
                time.sleep(min(sample_every, max(0.0, duration - elapsed)))
                samples.append((time.monotonic() - started, exporter.rss_mib()))
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        return MemoryRun(
            jobs=jobs,
            mode=mode,
            duration=duration,
            after_warm_up=after_warm_up,
            at_end=samples[-1][1],
            peak=max(rss for _, rss in samples),
            scrapes=sum(c[0] for c in counts),
            requests=simulator.requests() - requests_before,
            samples=samples,
        )


def run(sizes: list[int], modes: list[str], duration: float) -> str:
    got = [memory_run(jobs, mode, duration) for mode in modes for jobs in sizes]
    out = table(
        [
            "N, status series",
            "MiB after warm-up",
            f"MiB after {duration:g} s",
            "MiB peak",
            "scrapes",
            "API requests",
        ],
        [
            [f"{r.jobs} {r.mode}", r.after_warm_up, r.at_end, r.peak, r.scrapes, r.requests]
            for r in got
        ],
        f"Resident memory (VmRSS) over {duration:g} s of scraping (15 s, 15 s and 5 s scrapers; "
        "TTLs 60 s / 3600 s)",
    )
    for r in got:
        if r.duration >= 120:
            points = "  ".join(f"{t / 60:.0f}m:{rss:.0f}" for t, rss in r.samples[:: max(1, 6)])
            out += f"\n{r.jobs} {r.mode} RSS MiB by minute: {points}\n"
    return out
