"""`python -m bench`: run the measurements and print their tables.

The default is a quick pass (N = 100 and 1 000, short durations); docs/performance.md lists the
commands of the full runs it records (`--jobs 100,1000,10000`, `--duration 600`, ...).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from bench import cold, common, economy, idle, load, memory, prometheus, scrape, startup

MEASUREMENTS = ("scrape", "cold", "economy", "memory", "load", "idle", "startup", "prometheus")


def machine() -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    nginx = "nginx found" if common.nginx_binary() else "nginx not installed (limit: http.server)"
    return (
        f"Machine: {os.cpu_count()} CPUs, {cpu}, {memory_kib / 1024 / 1024:.1f} GiB; "
        f"Python {platform.python_version()}; {platform.system()} {platform.release()}; {nginx}; "
        f"load average {common.load_average()}"
    )


def load_ttl(jobs: int) -> float:
    """The load run's in-flight TTL: 15 s up to 1 000 jobs; beyond, the default 60 s, so the
    refreshes (half the jobs per TTL) stay within what the simulator and the exporter, sharing
    the machine with twenty scrapers, can do."""
    return 15.0 if jobs <= 1000 else 60.0


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def words(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help=f"comma list of {', '.join(MEASUREMENTS)}"
    )
    parser.add_argument(
        "--jobs",
        default="100,1000",
        help="comma list of N (default 100,1000); load and idle use the largest",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--scrapes", type=int, default=20, help="timed scrapes per warm run")
    parser.add_argument(
        "--status-series", default="dense", help="comma list of dense, sparse (default dense)"
    )
    parser.add_argument("--latency", type=float, default=0.02, help="simulated latency, cold")
    parser.add_argument("--concurrency", type=int, default=16, help="--max-concurrency, cold")
    parser.add_argument("--ttl", type=float, default=2.0, help="compressed in-flight TTL, economy")
    parser.add_argument(
        "--scrapers", default="1,3", help="comma list of scraper counts, economy (default 1,3)"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of scraping, memory (default 60)"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=60.0, help="seconds measured, load (default 60)"
    )
    parser.add_argument(
        "--connections", type=int, default=10000, help="idle connections, idle (default 10000)"
    )
    args = parser.parse_args(argv)
    only = words(args.only)
    unknown = set(only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    sizes = numbers(args.jobs)
    modes = words(args.status_series)
    common.emit(machine())
    common.emit("Command: python -m bench " + " ".join(sys.argv[1:] if argv is None else argv))
    common.emit("")
    started = time.monotonic()
    if "scrape" in only:
        common.emit(scrape.run(sizes, args.runs, args.scrapes, modes))
    if "cold" in only:
        for mode in modes:
            common.emit(cold.run(sizes, args.runs, args.latency, args.concurrency, mode))
    if "economy" in only:
        common.emit(economy.run(sizes, args.ttl, numbers(args.scrapers)))
    if "memory" in only:
        common.emit(memory.run(sizes, modes, args.duration))
    if "load" in only:
        jobs = max(sizes)
        ttl = load_ttl(jobs)
        result = load.run(jobs=jobs, seconds=args.load_seconds, warmup=ttl + 5, cache_ttl=ttl)
        common.emit(result.render())
    if "idle" in only:
        common.emit(idle.run(max(sizes), args.connections))
    if "startup" in only:
        common.emit(startup.run(sizes, args.runs))
    if "prometheus" in only:
        common.emit(prometheus.run())
    common.emit(f"(all measurements took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
