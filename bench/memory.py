"""Resident memory of the exporter after warm-up and over a period of scraping.

The exporter runs with its default TTLs (60 s in flight, 3600 s terminal) against the simulator's
`bulk` scenario (half the jobs finished, half running, so the running half is fetched again
every minute and the job part rendered again), scraped as two Prometheus servers would: every
15 s each, at different phases, gzip. VmRSS is read from /proc every `sample_every` seconds.

"Flat" is judged from the first minute on: the first minute holds the first refresh of the
running jobs, when new data arrives while the old is still shown.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

from bench import common
from bench.common import table

INTERVALS = (15.0, 15.0)
PHASES = (0.0, 7.0)
FLAT_FROM = 60.0
"""Seconds after warm-up from which the resident set is expected to stay flat."""


@dataclass
class MemoryRun:
    jobs: int
    mode: str
    duration: float
    after_warm_up: float
    scrapes: int
    requests: int
    samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since warm-up, MiB)."""

    @property
    def at_end(self) -> float:
        return self.samples[-1][1]

    @property
    def peak(self) -> float:
        return max(mib for _, mib in self.samples)

    def settled(self) -> list[float]:
        """Samples from `FLAT_FROM` seconds on."""
        return [mib for at, mib in self.samples if at >= FLAT_FROM - 1]

    @property
    def at_minute_1(self) -> float:
        settled = self.settled()
        return settled[0] if settled else float("nan")

    @property
    def spread(self) -> float:
        """Largest minus smallest sample from minute 1 on (nan for a run of a minute or less)."""
        settled = self.settled()
        return max(settled) - min(settled) if len(settled) > 1 else float("nan")


def _scrape_loop(
    port: int, interval: float, phase: float, stop: threading.Event, count: list[int]
) -> None:
    headers = common.scrape_headers(gzip=True, timeout=60)
    with common.Scraper(port) as scraper:
        next_at = time.monotonic() + phase
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            status, _, _ = scraper.get("/metrics", headers)
            if status != 200:
                raise RuntimeError(f"scrape: HTTP {status}")
            count[0] += 1
            next_at += interval
            while next_at < time.monotonic():
                next_at += interval


def memory_run(jobs: int, mode: str, duration: float, sample_every: float = 10.0) -> MemoryRun:
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        exporter = common.start_exporter(
            stack, simulator, common.bulk_job_ids(jobs), flags=["--status-series", mode]
        )
        common.full_scrape(exporter, jobs)
        common.timed_scrapes(exporter.port, "/metrics", common.scrape_headers(gzip=True), 2, 0)
        after_warm_up = exporter.rss_mib()
        requests_before = common.api_requests(simulator)
        stop = threading.Event()
        counts = [[0] for _ in INTERVALS]
        threads = [
            threading.Thread(
                target=_scrape_loop,
                args=(exporter.port, interval, phase, stop, counts[n]),
                daemon=True,
            )
            for n, (interval, phase) in enumerate(zip(INTERVALS, PHASES, strict=True))
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
            scrapes=sum(c[0] for c in counts),
            requests=common.api_requests(simulator) - requests_before,
            samples=samples,
        )


def run(sizes: list[int], modes: list[str], duration: float) -> str:
    got = [memory_run(jobs, mode, duration) for mode in modes for jobs in sizes]
    long = duration > FLAT_FROM + 10
    headers = ["N, status series", "MiB after warm-up", "MiB at 1 min"]
    if long:
        headers += [f"MiB at {duration / 60:g} min", "spread from 1 min"]
    headers += ["MiB peak", "scrapes", "API requests"]
    rows: list[list[object]] = []
    for r in got:
        row: list[object] = [f"{r.jobs} {r.mode}", r.after_warm_up, r.at_minute_1]
        if long:
            row += [r.at_end, r.spread]
        rows.append([*row, r.peak, r.scrapes, r.requests])
    out = table(
        headers,
        rows,
        f"Resident memory (VmRSS) over {duration:g} s of scraping (two scrapers every 15 s, "
        f"gzip; TTLs 60 s / 3600 s; load average {common.load_average()} at the end)",
    )
    for r in got:
        if long:
            points = "  ".join(
                f"{at / 60:.0f}m:{mib:.1f}"
                for at, mib in r.samples
                if abs(at / 60 - round(at / 60)) < 0.1
            )
            out += f"\n{r.jobs} {r.mode} RSS MiB by minute: {points}\n"
    return out
