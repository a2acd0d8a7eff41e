"""What the benchmarks share beyond the test helpers: a keep-alive scraper, the static-file
servers the warm scrape is held to, and tables.

Processes (the exporter, the simulator, Prometheus, nginx), free ports, resident memory and
exposition parsing come from the test helpers (`tests.support`), so the benchmarks start and
read them exactly as the end-to-end tests do. Every process runs on loopback, belongs to a
`contextlib.ExitStack` that stops it, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cerby_exporter.simulator import bulk_jobs
from tests.support import (
    ExporterProcess,
    SimulatorProcess,
    free_port,
    parse_samples,
    rss_mib,
    run_service,
    value,
)

API_KEY: Final = "bench-key-0123456789"
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
TEXT_ACCEPT: Final = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
OPENMETRICS_ACCEPT: Final = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
RELOAD_WAIT: Final = 1.2
"""Seconds to let pass after the exporter's last look at its job-ID file before writing it: it
looks at most once a second, and a benchmark that times the scrape loading new IDs needs that
scrape to be the one that sees them."""


def bulk_job_ids(count: int) -> list[str]:
    """The IDs the simulator's `bulk` scenario serves, in its order."""
    return list(bulk_jobs(count))


def running_bulk_jobs(count: int) -> int:
    """How many of the `bulk` scenario's jobs are in flight (the rest are finished)."""
    return sum(1 for job in bulk_jobs(count).values() if job.timeline[0][1]["status"] != "finished")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc counts it in clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cerby-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_simulator(stack: contextlib.ExitStack, jobs: int, latency: float) -> SimulatorProcess:
    """The simulator's `bulk` scenario (half the jobs finished, half running) on a free port."""
    args = ["--api-key", API_KEY, "--scenario", "bulk", "--jobs", str(jobs)]
    return stack.enter_context(SimulatorProcess([*args, "--latency", f"{latency:g}"]))


def api_requests(simulator: SimulatorProcess) -> int:
    """Job requests the simulator has answered so far."""
    count = simulator.stats()["requests"]
    if not isinstance(count, int):
        raise RuntimeError("simulator stats have no request count")
    return count


def requests_by_job(simulator: SimulatorProcess) -> dict[str, int]:
    """Requests the simulator has answered so far, per job ID."""
    by_job = simulator.stats()["by_job"]
    if not isinstance(by_job, dict):
        raise RuntimeError("simulator stats have no by_job")
    return {str(job_id): int(count) for job_id, count in by_job.items()}


@dataclass
class Exporter:
    process: ExporterProcess
    ids_file: Path

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def set_job_ids(self, job_ids: Sequence[str]) -> None:
        """Replace the job-ID file at once (a rename); the exporter reloads it when it scrapes."""
        write_ids(self.ids_file, job_ids)


def write_ids(path: Path, job_ids: Sequence[str]) -> None:
    staging = path.with_suffix(".new")
    staging.write_text("".join(f"{job_id}\n" for job_id in job_ids), encoding="utf-8")
    staging.replace(path)


def start_exporter(
    stack: contextlib.ExitStack,
    simulator: SimulatorProcess,
    job_ids: Sequence[str],
    *,
    flags: Sequence[str] = (),
    max_jobs: int | None = None,
    wait: bool = True,
) -> Exporter:
    """`python -m cerby_exporter` tracking `job_ids`, from a file (10 000 IDs do not fit in one
    argument), with a state file of its own, so nothing is restored from an earlier run; by
    default it returns once /readyz answers."""
    workdir = stack.enter_context(temp_dir())
    ids_file = workdir / "job-ids.txt"
    write_ids(ids_file, job_ids)
    args = [
        "--api-url",
        simulator.base_url,
        "--job-ids-file",
        str(ids_file),
        "--max-jobs",
        str(max_jobs or max(len(job_ids), 1)),
        "--state.path",
        str(workdir / "state.sqlite"),
        "--log.level",
        "warning",
        *flags,
    ]
    process = stack.enter_context(ExporterProcess(args, workdir, {"CERBY_API_KEY": API_KEY}))
    if wait:
        process.wait_ready(timeout=600)
    return Exporter(process, ids_file)


class Scraper:
    """A keep-alive HTTP/1.1 client, as Prometheus holds one connection per target. Plain
    `http.client`: the same client times the exporter and the static-file servers."""

    def __init__(self, port: int, timeout: float = 600.0) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """Status, body and seconds from sending the request to the last byte read."""
        started = time.perf_counter()
        self._connection.request("GET", path, headers=headers or {})
        response = self._connection.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - started

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Scraper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scrape_headers(
    *, gzip: bool, openmetrics: bool = False, timeout: float = 120
) -> dict[str, str]:
    headers = {
        "Accept": OPENMETRICS_ACCEPT if openmetrics else TEXT_ACCEPT,
        "X-Prometheus-Scrape-Timeout-Seconds": f"{timeout:g}",
    }
    if gzip:
        headers["Accept-Encoding"] = "gzip"
    return headers


Target = tuple[int, str, dict[str, str]]
"""A server to time: port, path, request headers."""


def timed_scrapes(
    port: int, path: str, headers: dict[str, str], count: int, warmup: int = 2
) -> tuple[list[float], bytes]:
    """Seconds of `count` requests on one keep-alive connection, after `warmup` untimed ones."""
    times, bodies = timed_in_turn([(port, path, headers)], count, warmup)
    return times[0], bodies[0]


def timed_in_turn(
    targets: Sequence[Target], count: int, warmup: int = 2
) -> tuple[list[list[float]], list[bytes]]:
    """Seconds of `count` requests to each target, over one keep-alive connection each, taken in
    turn (a request to each per round) after `warmup` untimed rounds: a change in the machine's
    state (another process, which CPU serves which) falls on all of them alike. Also the last
    body each sent."""
    with contextlib.ExitStack() as stack:
        scrapers = [stack.enter_context(Scraper(port)) for port, _, _ in targets]
        times: list[list[float]] = [[] for _ in targets]
        bodies = [b""] * len(targets)
        for n in range(warmup + count):
            for index, (scraper, (_, path, headers)) in enumerate(
                zip(scrapers, targets, strict=True)
            ):
                status, bodies[index], seconds = scraper.get(path, headers)
                if status != 200:
                    raise RuntimeError(f"GET {path}: HTTP {status}")
                if n >= warmup:
                    times[index].append(seconds)
    return times, bodies


def full_scrape(exporter: Exporter, jobs: int) -> bytes:
    """One scrape that waits for every job (a 120 s scrape timeout), checked to hold them all:
    what a warm measurement starts from. Compressed, as Prometheus asks: a plain answer would
    leave the exporter holding the job part uncompressed too, which Prometheus never makes it do.
    Returns the exposition uncompressed."""
    with Scraper(exporter.port) as scraper:
        status, raw, _ = scraper.get("/metrics", scrape_headers(gzip=True))
    body = gzip.decompress(raw) if status == 200 else raw
    shown = jobs_shown(body)
    if status != 200 or shown != jobs:
        raise RuntimeError(f"full scrape: HTTP {status}, {shown} of {jobs} jobs")
    return body


def jobs_shown(text: bytes) -> int:
    """Jobs with data in a plain exposition (one `cerby_job_info` line each)."""
    return text.count(b"\ncerby_job_info{")


def tracked_jobs(text: bytes) -> float | None:
    """`cerby_tracked_jobs{source="configured"}` of a plain exposition, read from the tail
    that follows the job part (parsing 10 000 jobs' lines for it would cost more than the
    scrape)."""
    start = text.rfind(b"# HELP cerby_up ")
    if start < 0:
        return None
    samples = parse_samples(text[start:].decode())
    return value(samples, "cerby_tracked_jobs", source="configured")


# --- the static-file limit ----------------------------------------------------------------


def nginx_binary() -> str | None:
    """Debian's nginx-light (`bash .ci/install-tools bench`), if installed."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def start_nginx(stack: contextlib.ExitStack, root: Path) -> int | None:
    """nginx serving `root` on a free port (returned), or None when it is not installed.

    `metrics` is served as is; `metrics.gz` with `Content-Encoding: gzip`, as a compressed
    exposition would be. `/metrics` must exist: readiness is checked on it.
    """
    binary = nginx_binary()
    if binary is None:
        return None
    port = free_port()
    prefix = root / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush off;
  tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 600s;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  types {{ }}
  default_type "text/plain; version=0.0.4; charset=utf-8";
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location = /metrics.gz {{ add_header Content-Encoding gzip; }}
  }}
}}
""",
        encoding="utf-8",
    )
    argv = [binary, "-p", str(prefix), "-e", "stderr", "-c", str(conf)]
    service = stack.enter_context(run_service("nginx", argv, prefix))
    service.wait_ready(f"http://127.0.0.1:{port}/metrics")
    return port


def start_python_static(stack: contextlib.ExitStack, root: Path) -> int:
    """`python -m http.server` serving `root`: a Python server that does nothing but send a
    file, for comparison."""
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    argv += ["--directory", str(root)]
    service = stack.enter_context(run_service("http.server", argv, root))
    service.wait_ready(f"http://127.0.0.1:{port}/metrics")
    return port


# --- output -------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    out = [title] if title else []
    out.append(line(cells[0]))
    out.append("  ".join("-" * width for width in widths))
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def ms(seconds: float) -> float:
    return seconds * 1000


def load_average() -> str:
    """The machine's 1-minute load average: on 2 shared cores, above 2 means others ran."""
    return f"{os.getloadavg()[0]:.2f}"


def emit(text: str) -> None:
    print(text, flush=True)
