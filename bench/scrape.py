"""Warm scrapes against the static-file limit, CPU per scrape, and the cardinality budget.

For each N and status-series mode, one exporter tracks N jobs of the simulator's `bulk` scenario
with TTLs long enough that nothing expires during the measurement, so every scrape is served
from the cache: one full scrape loads them all first. A run times `scrapes` scrapes over one
keep-alive connection (as Prometheus holds one), plain and then gzip, saves the bytes of the
last answer of each, and has nginx and `python -m http.server` serve those very bytes, timed the
same way with the same client: each ratio is taken within its run, then the median of the runs'
ratios is shown.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

from bench import common
from bench.common import Exporter, median, ms, table
from cerby_exporter.collector import JOB_FAMILIES

LONG_TTL = "86400"
CPU_SCRAPES = 200
"""Scrapes to average CPU time over: /proc counts it in 10 ms ticks."""


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


def start_warm(stack: contextlib.ExitStack, jobs: int, status_series: str) -> Exporter:
    simulator = common.start_simulator(stack, jobs, latency=0.0)
    flags = ["--cache-ttl", LONG_TTL, "--terminal-cache-ttl", LONG_TTL]
    exporter = common.start_exporter(
        stack,
        simulator,
        common.bulk_job_ids(jobs),
        flags=[*flags, "--status-series", status_series],
    )
    common.full_scrape(exporter, jobs)
    return exporter


def exporter_times(exporter: Exporter, gzip: bool, scrapes: int) -> tuple[float, float, bytes]:
    """Median milliseconds of `scrapes` scrapes, CPU milliseconds per scrape, the last body."""
    headers = common.scrape_headers(gzip=gzip)
    times, body = common.timed_scrapes(exporter.port, "/metrics", headers, scrapes)
    cpu_before = exporter.cpu_seconds()
    common.timed_scrapes(exporter.port, "/metrics", headers, CPU_SCRAPES, warmup=0)
    cpu = (exporter.cpu_seconds() - cpu_before) / CPU_SCRAPES
    return ms(median(times)), ms(cpu), body


def warm_run(exporter: Exporter, scrapes: int) -> dict[bool, WarmRun]:
    """One run, both encodings: the exporter, then nginx and http.server on its bytes."""
    measured = {gzip: exporter_times(exporter, gzip, scrapes) for gzip in (False, True)}
    runs: dict[bool, WarmRun] = {}
    with contextlib.ExitStack() as stack, common.temp_dir() as root:
        (root / "metrics").write_bytes(measured[False][2])
        (root / "metrics.gz").write_bytes(measured[True][2])
        nginx = common.start_nginx(stack, root)
        python = common.start_python_static(stack, root)
        for gzip, (exporter_ms, cpu_ms, body) in measured.items():
            path = "/metrics.gz" if gzip else "/metrics"
            nginx_ms = float("nan")
            if nginx is not None:
                nginx_times, served = common.timed_scrapes(nginx, path, {}, scrapes)
                if served != body:
                    raise RuntimeError("nginx served other bytes")
                nginx_ms = ms(median(nginx_times))
            python_times, _ = common.timed_scrapes(python, path, {}, scrapes)
            runs[gzip] = WarmRun(exporter_ms, nginx_ms, ms(median(python_times)), len(body), cpu_ms)
    return runs


def cardinality(body: bytes) -> Cardinality:
    families: Counter[str] = Counter()
    job_bytes = 0
    for line in body.split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
        families[name] += 1
        if name in JOB_FAMILIES:
            job_bytes += len(line) + 1
    job_series = sum(n for name, n in families.items() if name in JOB_FAMILIES)
    return Cardinality(sum(families.values()), job_series, job_bytes, len(body))


def run(sizes: list[int], runs: int, scrapes: int, status_series: list[str]) -> str:
    rows: list[list[object]] = []
    budget: list[list[object]] = []
    for mode in status_series:
        for jobs in sizes:
            results: dict[bool, list[WarmRun]] = {False: [], True: []}
            with contextlib.ExitStack() as stack:
                exporter = start_warm(stack, jobs, mode)
                card = cardinality(common.full_scrape(exporter, jobs))
                for _ in range(runs):
                    for gzip, one in warm_run(exporter, scrapes).items():
                        results[gzip].append(one)
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
        f"ratios taken within each run; load average {common.load_average()} at the end)",
    )
    out += "\n" + table(
        ["N, status series", "series", "series/job", "bytes/job", "KiB total"],
        budget,
        "Cardinality budget (plain text exposition)",
    )
    return out
