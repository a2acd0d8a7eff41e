"""Load: many Prometheus servers scraping one exporter that tracks a thousand jobs (or N).

`python -m bench.load` runs the full version (20 scrapers back to back for 60 s, 1000 jobs from the
simulator's `bulk` scenario, half finished and half running, a 15 s cache TTL) and prints one
table; `python -m bench --only load` runs it from the benchmark suite. The exporter first
serves one complete scrape, then measuring starts after `warmup` seconds of the same load, so
that the first window already includes a refresh of every running job (the resident set's
high-water mark is reached then, not before):

- every response must be a complete 200 (failures are counted, not hidden);
- p50/p99/max scrape latency, as the scrapers saw it;
- the exporter's resident memory (VmRSS) over the first and the last ten seconds, median of
  samples taken every half second: flat means no growth under steady load;
- API calls made during the run against the ideal, one per running job per cache TTL (finished
  jobs are cached for an hour and cost nothing), and the most any single job got.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import statistics
import threading
import time
from dataclasses import dataclass, field

from bench import common
from bench.common import Scraper, scrape_headers, table
from tests.support import rss_mib


@dataclass
class LoadResult:
    jobs: int
    running_jobs: int
    scrapers: int
    seconds: float
    """Length of the measured run, after the warm-up."""
    cache_ttl: float
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the measured run began, MiB)."""
    calls_by_job: dict[str, int] = field(default_factory=dict)
    """API calls each job got during the measured run."""
    window: float = 10.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.failures)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def rss_window(self, first: bool) -> float:
        """Median RSS over the first or the last `window` seconds of the run."""
        if first:
            picked = [mib for at, mib in self.rss if at <= self.window]
        else:
            picked = [mib for at, mib in self.rss if at >= self.seconds - self.window]
        return statistics.median(picked) if picked else float("nan")

    def rss_trend(self) -> list[float]:
        """Median RSS of each successive `window` of the run."""
        buckets: dict[int, list[float]] = {}
        for at, mib in self.rss:
            buckets.setdefault(
                min(int(at // self.window), int(self.seconds // self.window) - 1), []
            ).append(mib)
        return [statistics.median(buckets[n]) for n in sorted(buckets)]

    @property
    def api_calls(self) -> int:
        return sum(self.calls_by_job.values())

    @property
    def ideal_calls(self) -> float:
        """One call per running job per TTL; none for finished jobs (cached for an hour)."""
        return self.running_jobs * self.seconds / self.cache_ttl

    def render(self) -> str:
        rows: list[tuple[str, object]] = [
            ("tracked jobs (running / finished)", f"{self.running_jobs} / "
             f"{self.jobs - self.running_jobs}"),
            ("scrapers x seconds", f"{self.scrapers} x {self.seconds:g}"),
            ("requests", self.requests),
            ("failed responses", len(self.failures)),
            ("requests per second", self.requests / self.seconds),
            ("scrape latency p50 (ms)", self.percentile(0.50) * 1000),
            ("scrape latency p99 (ms)", self.percentile(0.99) * 1000),
            ("scrape latency max (ms)", max(self.latencies, default=float("nan")) * 1000),
            (f"RSS first {self.window:g} s (MiB, median)", self.rss_window(first=True)),
            (f"RSS last {self.window:g} s (MiB, median)", self.rss_window(first=False)),
            (f"RSS each {self.window:g} s (MiB)", " ".join(f"{m:.1f}" for m in self.rss_trend())),
            ("API calls during the run", self.api_calls),
            (f"ideal (running jobs x run / TTL {self.cache_ttl:g} s)", self.ideal_calls),
            ("most calls to one job", max(self.calls_by_job.values(), default=0)),
        ]  # fmt: skip
        return table(
            ("measure", "value"),
            rows,
            title=f"Load: {self.scrapers} scrapers back to back, {self.jobs} jobs, cache TTL "
            f"{self.cache_ttl:g} s (load average {common.load_average()} at the end)",
        )


def _scrape_loop(
    port: int,
    jobs: int,
    stop: threading.Event,
    measuring: threading.Event,
    result: LoadResult,
    lock: threading.Lock,
) -> None:
    """Scrape back to back on one keep-alive connection, as a Prometheus server would (without
    the pause between scrapes), and check each answer is whole."""
    headers = scrape_headers(gzip=True, timeout=10)
    scraper = Scraper(port, timeout=30)
    try:
        while not stop.is_set():
            problem = None
            seconds = 0.0
            try:
                status, body, seconds = scraper.get("/metrics", headers)
                if status != 200:
                    problem = f"HTTP {status}"
                else:
                    text = gzip.decompress(body)
                    if common.tracked_jobs(text) != jobs or common.jobs_shown(text) != jobs:
                        problem = "incomplete exposition"
            except (OSError, http.client.HTTPException, EOFError) as exc:
                problem = type(exc).__name__
                scraper.close()
                scraper = Scraper(port, timeout=30)
            if not measuring.is_set():
                continue
            with lock:
                if problem is None:
                    result.latencies.append(seconds)
                else:
                    result.failures.append(problem)
    finally:
        scraper.close()


def run(
    *,
    jobs: int = 1000,
    scrapers: int = 20,
    seconds: float = 60.0,
    warmup: float = 20.0,
    cache_ttl: float = 15.0,
    latency: float = 0.002,
    window: float = 10.0,
) -> LoadResult:
    """Start a simulator and an exporter, load it, and measure. Everything is stopped after."""
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency)
        ids = common.bulk_job_ids(jobs)
        exporter = common.start_exporter(
            stack,
            simulator,
            ids,
            flags=["--cache-ttl", f"{cache_ttl:g}", "--terminal-cache-ttl", "3600"],
        )
        common.full_scrape(exporter, jobs)
        running = common.running_bulk_jobs(jobs)
        result = LoadResult(jobs, running, scrapers, seconds, cache_ttl, window=window)
        stop, measuring, lock = threading.Event(), threading.Event(), threading.Lock()
        threads = [
            threading.Thread(
                target=_scrape_loop,
                args=(exporter.port, jobs, stop, measuring, result, lock),
                name=f"scraper-{n}",
                daemon=True,
            )
            for n in range(scrapers)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(warmup)
            before = common.requests_by_job(simulator)
            measuring.set()
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                result.rss.append((elapsed, rss_mib(exporter.pid)))
                time.sleep(min(0.5, max(0.0, seconds - elapsed)))
            measuring.clear()
            after = common.requests_by_job(simulator)
        finally:
            stop.set()
            for thread in threads:
                thread.join(35)
        result.calls_by_job = {job: after.get(job, 0) - before.get(job, 0) for job in ids}
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--scrapers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="seconds of the same load before measuring: past the first cache refresh",
    )
    parser.add_argument("--cache-ttl", type=float, default=15.0)
    args = parser.parse_args(argv)
    result = run(
        jobs=args.jobs,
        scrapers=args.scrapers,
        seconds=args.seconds,
        warmup=args.warmup,
        cache_ttl=args.cache_ttl,
    )
    print(result.render(), flush=True)
    return 1 if result.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
