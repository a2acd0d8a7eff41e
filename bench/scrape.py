"""Warm scrapes against the static-file limit, CPU per scrape, and the cardinality budget.

For each N and status-series mode, one exporter tracks N jobs of the simulator's `bulk` scenario
with TTLs long enough that nothing expires during the measurement, so every scrape is served
from the cache: one full scrape loads them all first. A run saves one answer of each encoding,
plain and gzip, and has nginx and `python -m http.server` serve those very bytes. It times the
three with the same client, `scrapes` scrapes each over one keep-alive connection (as Prometheus
holds one): back to back (one server's scrapes in a row, then the next's) and in turn (a request
to each per round). Each ratio is taken within its run, then the median of the runs' ratios is
shown, with every run's.
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
ORDERS = ("back to back", "in turn")


@dataclass
class Timing:
    exporter_ms: float
    nginx_ms: float
    python_ms: float


@dataclass
class WarmRun:
    timings: dict[str, Timing]
    """By order: each server's scrapes in a row (one server, then the next), or in turn."""
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


def exporter_cpu(exporter: Exporter, gzip: bool) -> float:
    """The exporter's CPU milliseconds per scrape, over `CPU_SCRAPES` scrapes."""
    headers = common.scrape_headers(gzip=gzip)
    cpu_before = exporter.cpu_seconds()
    common.timed_scrapes(exporter.port, "/metrics", headers, CPU_SCRAPES, warmup=0)
    return ms((exporter.cpu_seconds() - cpu_before) / CPU_SCRAPES)


def warm_run(exporter: Exporter, scrapes: int) -> dict[bool, WarmRun]:
    """One run, both encodings: the exporter's last answer saved, then served by nginx and
    http.server; the three timed back to back (each server's scrapes in a row, as a benchmark
    loop does), then in turn (a request to each per round, as one Prometheus scraping the three
    would: each server idle between two of its scrapes)."""
    answers = {
        gzip: common.timed_scrapes(
            exporter.port, "/metrics", common.scrape_headers(gzip=gzip), 1, warmup=0
        )[1]
        for gzip in (False, True)
    }
    runs: dict[bool, WarmRun] = {}
    with contextlib.ExitStack() as stack, common.temp_dir() as root:
        (root / "metrics").write_bytes(answers[False])
        (root / "metrics.gz").write_bytes(answers[True])
        nginx = common.start_nginx(stack, root)
        python = common.start_python_static(stack, root)
        for gzip, body in answers.items():
            path = "/metrics.gz" if gzip else "/metrics"
            servers: list[common.Target] = [
                (exporter.port, "/metrics", common.scrape_headers(gzip=gzip)),
                (python, path, {}),
            ]
            if nginx is not None:
                servers.append((nginx, path, {}))
            block = [common.timed_scrapes(*server, scrapes)[0] for server in servers]
            turn, served = common.timed_in_turn(servers, scrapes)
            if nginx is not None and served[2] != body:
                raise RuntimeError("nginx served other bytes")
            timings = {
                order: Timing(
                    ms(median(times[0])),
                    ms(median(times[2])) if nginx is not None else float("nan"),
                    ms(median(times[1])),
                )
                for order, times in zip(ORDERS, (block, turn), strict=True)
            }
            runs[gzip] = WarmRun(timings, len(body), exporter_cpu(exporter, gzip))
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
    rows: dict[str, list[list[object]]] = {order: [] for order in ORDERS}
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
                label = f"{jobs} {mode} {'gzip' if gzip else 'plain'}"
                for order in ORDERS:
                    timed = [r.timings[order] for r in got]
                    ratios = [t.exporter_ms / t.nginx_ms for t in timed]
                    rows[order].append(
                        [
                            label,
                            median([r.size for r in got]) / 1024,
                            median([t.exporter_ms for t in timed]),
                            median([t.nginx_ms for t in timed]),
                            median(ratios),
                            " ".join(f"{ratio:.2f}" for ratio in ratios),
                            median([t.python_ms for t in timed]),
                            median([t.exporter_ms / t.python_ms for t in timed]),
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
    out = ""
    for order in ORDERS:
        out += table(
            [
                "N, status series, encoding",
                "KiB",
                "exporter ms",
                "nginx ms",
                "x nginx",
                "x nginx, each run",
                "http.server ms",
                "x http.server",
                "CPU ms/scrape",
            ],
            rows[order],
            f"Warm scrape of /metrics, {order} (median of {scrapes} scrapes a run, median of "
            f"{runs} runs; ratios taken within each run; load average "
            f"{common.load_average()} at the end)",
        )
        out += "\n"
    out += table(
        ["N, status series", "series", "series/job", "bytes/job", "KiB total"],
        budget,
        "Cardinality budget (plain text exposition)",
    )
    return out
