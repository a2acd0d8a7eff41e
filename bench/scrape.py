"""Warm scrapes against the static-file limit, CPU per scrape, and the cardinality budget.

For each N: the exporter tracks N jobs of the simulator's `bulk` scenario with TTLs long enough
that nothing expires during the run, so every scrape is served from the cache. One run takes the
median of `scrapes` scrapes over one keep-alive connection (as Prometheus holds one), plain and
gzip, then serves the very bytes of the last answer from nginx and from `python -m http.server`
on the same machine and times them the same way: the ratio is measured within the run.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

from bench import common
from bench.common import Exporter, median, ms, table
from cerby_exporter.collector import JOB_FAMILIES

LONG_TTL = "86400"


@dataclass
class WarmRun:
    exporter_ms: float
    nginx_ms: float
    python_ms: float
    size: int
    cpu_ms: float


@dataclass
class Cardinality:
    series: int
    job_series: int
    job_bytes: int
    total_bytes: int
    by_family: dict[str, int]


def start_warm(
    stack: contextlib.ExitStack, jobs: int, status_series: str
) -> tuple[common.Simulator, Exporter]:
    simulator = common.start_simulator(stack, jobs, latency=0.0)
    exporter = common.start_exporter(
        stack,
        simulator.base_url,
        common.bulk_job_ids(jobs),
        flags=[
            "--cache-ttl",
            LONG_TTL,
            "--terminal-cache-ttl",
            LONG_TTL,
            "--status-series",
            status_series,
            "--scrape-timeout",
            "120",
        ],
    )
    # The warm-up collection may have stopped at its deadline: one scrape finishes the job.
    common.timed_scrapes(exporter.port, "/metrics", common.scrape_headers(gzip=False), 1, 0)
    return simulator, exporter


CPU_SCRAPES = 200
"""Scrapes to average CPU time over: /proc counts it in 10 ms ticks."""


def warm_run(exporter: Exporter, gzip: bool, scrapes: int) -> WarmRun:
    headers = common.scrape_headers(gzip=gzip)
    times, body = common.timed_scrapes(exporter.port, "/metrics", headers, scrapes, warmup=2)
    cpu_before = exporter.cpu_seconds()
    common.timed_scrapes(exporter.port, "/metrics", headers, CPU_SCRAPES, warmup=0)
    cpu = (exporter.cpu_seconds() - cpu_before) / CPU_SCRAPES
    name = "metrics.gz" if gzip else "metrics"
    with contextlib.ExitStack() as stack, common.temp_dir() as root:
        (root / name).write_bytes(body)
        if gzip:  # the servers' readiness is checked on /metrics
            (root / "metrics").write_bytes(b"ready\n")
        nginx = common.start_nginx(stack, root)
        nginx_ms = float("nan")
        if nginx is not None:
            nginx_times, served = common.timed_scrapes(nginx.port, "/" + name, {}, scrapes)
            if served != body:
                raise RuntimeError("nginx served other bytes")
            nginx_ms = ms(median(nginx_times))
        python = common.start_python_static(stack, root)
        python_times, _ = common.timed_scrapes(python.port, "/" + name, {}, scrapes)
    return WarmRun(ms(median(times)), nginx_ms, ms(median(python_times)), len(body), cpu * 1000)


def cardinality(exporter: Exporter, jobs: int) -> Cardinality:
    with common.Scraper(exporter.port) as scraper:
        _, body, _ = scraper.get("/metrics", common.scrape_headers(gzip=False))
    families: Counter[str] = Counter()
    job_bytes = 0
    series = 0
    for line in body.split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        series += 1
        name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
        families[name] += 1
        if name in JOB_FAMILIES:
            job_bytes += len(line) + 1
    job_series = sum(n for name, n in families.items() if name in JOB_FAMILIES)
    return Cardinality(series, job_series, job_bytes, len(body), dict(families))


def run(sizes: list[int], runs: int, scrapes: int, status_series: list[str]) -> str:
    rows: list[list[object]] = []
    budget: list[list[object]] = []
    for mode in status_series:
        for jobs in sizes:
            results: dict[bool, list[WarmRun]] = {False: [], True: []}
            card: Cardinality | None = None
            for _ in range(runs):
                with contextlib.ExitStack() as stack:
                    _, exporter = start_warm(stack, jobs, mode)
                    for gzip in (False, True):
                        results[gzip].append(warm_run(exporter, gzip, scrapes))
                    if card is None:
                        card = cardinality(exporter, jobs)
            for gzip in (False, True):
                got = results[gzip]
                rows.append(
                    [
                        f"{jobs} {mode} {'gzip' if gzip else 'plain'}",
                        median([r.size for r in got]) / 1024,
                        median([r.exporter_ms for r in got]),
                        median([r.nginx_ms for r in got]),
                        median([r.exporter_ms / r.nginx_ms for r in got]),
                        median([r.python_ms for r in got]),
                        median([r.exporter_ms / r.python_ms for r in got]),
                        median([r.cpu_ms for r in got]),
                    ]
                )
            if card is not None:
                budget.append(
                    [
                        f"{jobs} {mode}",
                        card.series,
                        card.job_series / jobs,
                        card.job_bytes / jobs,
                        card.total_bytes / 1024,
                    ]
                )
    out = table(
        [
            "N, status series, encoding",
            "KiB",
            "exporter ms",
            "nginx ms",
            "x nginx",
            "http.server ms",
            "x http.server",
            "CPU ms/scrape",
        ],
        rows,
        f"Warm scrape of /metrics (median of {scrapes} scrapes a run, median of {runs} runs; "
        "ratios taken within each run)",
    )
    out += "\n" + table(
        ["N, status series", "series", "series/job", "bytes/job", "KiB total"],
        budget,
        "Cardinality budget (plain text exposition)",
    )
    return out
