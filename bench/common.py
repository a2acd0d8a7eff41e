"""Process helpers for the benchmarks: the simulator, the exporter and a static file server.

Everything runs on loopback, on free ports, as child processes that are always stopped (a
`contextlib.ExitStack` owns them), and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

API_KEY: Final = "bench-key-0123456789"
PYTHON: Final = sys.executable
START_TIMEOUT: Final = 30.0
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
TEXT_ACCEPT: Final = "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
OPENMETRICS_ACCEPT: Final = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bulk_job_ids(count: int) -> list[str]:
    """The IDs the simulator's `bulk` scenario serves, in its order."""
    from cerby_exporter.simulator import bulk_jobs

    return list(bulk_jobs(count))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Child:
    """A child process whose output is drained on a thread so it never blocks on a pipe."""

    name: str
    process: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._ready.set()

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match is not None:
                    return match
                seen += 1
            if self.process.poll() is not None:
                break
            self._ready.wait(0.02)
            self._ready.clear()
        tail = "\n".join(self.lines[-10:])
        raise RuntimeError(f"{self.name} did not print {pattern!r} in time:\n{tail}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._thread.join(2)


def spawn(
    name: str, argv: Sequence[str], stack: contextlib.ExitStack, env: dict[str, str] | None = None
) -> Child:
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    child = Child(name, process)
    stack.callback(child.stop)
    return child


@dataclass
class Simulator:
    child: Child
    base_url: str

    def stats(self) -> dict[str, object]:
        import json

        host, port = self.base_url.removeprefix("http://").split("/", 1)[0].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", "/_sim/stats")
            data = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        if not isinstance(data, dict):
            raise RuntimeError("simulator stats are not an object")
        return data

    def requests(self) -> int:
        value = self.stats()["requests"]
        return int(value) if isinstance(value, int) else 0


def start_simulator(stack: contextlib.ExitStack, jobs: int, latency: float) -> Simulator:
    child = spawn(
        "simulator",
        [
            PYTHON,
            "-m",
            "cerby_exporter.simulator",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            API_KEY,
            "--scenario",
            "bulk",
            "--jobs",
            str(jobs),
            "--latency",
            str(latency),
        ],
        stack,
    )
    match = child.wait_for_line(r"listening on (http://\S+)")
    return Simulator(child, match.group(1))


@dataclass
class Exporter:
    child: Child
    port: int
    ids_file: Path

    @property
    def pid(self) -> int:
        return self.child.pid

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
    api_url: str,
    job_ids: Sequence[str],
    *,
    flags: Sequence[str] = (),
    wait_ready: bool = True,
    max_jobs: int | None = None,
    wait_listening: bool = True,
) -> Exporter:
    """Start `python -m cerby_exporter` tracking `job_ids` (from a file: 10 000 IDs do not fit in
    one command-line argument) and wait until it listens and, by default, is ready."""
    workdir = Path(tempfile.mkdtemp(prefix="cerby-bench-"))
    stack.callback(shutil.rmtree, workdir, True)
    ids_file = workdir / "job-ids.txt"
    write_ids(ids_file, job_ids)
    port = free_port()
    child = spawn(
        "exporter",
        [
            PYTHON,
            "-m",
            "cerby_exporter",
            "--api-url",
            api_url,
            "--job-ids-file",
            str(ids_file),
            "--max-jobs",
            str(max_jobs or max(len(job_ids), 1)),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--log.level",
            "warning",
            *flags,
        ],
        stack,
        env={"CERBY_API_KEY": API_KEY},
    )
    exporter = Exporter(child, port, ids_file)
    if not wait_listening:
        return exporter
    wait_http(port, "/healthz", child)
    if wait_ready:
        wait_http(port, "/readyz", child, timeout=600)
    return exporter


def wait_http(
    port: int, path: str, child: Child | None = None, timeout: float = START_TIMEOUT
) -> None:
    """Poll until `path` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited:\n" + "\n".join(child.lines[-10:]))
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            status = connection.getresponse().status
            connection.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"http://127.0.0.1:{port}{path} not 200 within {timeout:g}s")


def rss_mib(pid: int) -> float:
    """Resident set size (VmRSS) of a process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Scraper:
    """A keep-alive HTTP/1.1 client, as Prometheus holds one connection per target."""

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


def timed_scrapes(
    port: int, path: str, headers: dict[str, str], count: int, warmup: int = 2
) -> tuple[list[float], bytes]:
    """Seconds of `count` scrapes on one keep-alive connection, after `warmup` untimed ones."""
    times: list[float] = []
    body = b""
    with Scraper(port) as scraper:
        for n in range(warmup + count):
            status, body, seconds = scraper.get(path, headers)
            if status != 200:
                raise RuntimeError(f"GET {path}: HTTP {status}")
            if n >= warmup:
                times.append(seconds)
    return times, body


@dataclass
class StaticServer:
    """Serves fixed files; `kind` says which server."""

    kind: str
    port: int


def nginx_binary() -> str | None:
    """Debian's nginx-light (`apt-get install nginx-light`), if installed."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def start_nginx(stack: contextlib.ExitStack, root: Path) -> StaticServer | None:
    """nginx (Debian's nginx-light) serving `root`, or None when it is not installed.

    `metrics` is served as is; `metrics.gz` with `Content-Encoding: gzip`, as a compressed
    exposition would be.
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
    child = spawn("nginx", [binary, "-p", str(prefix), "-e", "stderr", "-c", str(conf)], stack)
    wait_http(port, "/metrics", child)
    return StaticServer("nginx", port)


def start_python_static(stack: contextlib.ExitStack, root: Path) -> StaticServer:
    """`python -m http.server` serving `root`: a Python server doing nothing but send a file."""
    port = free_port()
    child = spawn(
        "http.server",
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        stack,
    )
    wait_http(port, "/metrics", child)
    return StaticServer("python -m http.server", port)


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cerby-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(value) for value in row] for row in rows]
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


def emit(text: str) -> None:
    print(text, flush=True)
