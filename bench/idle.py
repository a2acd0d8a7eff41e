"""Idle connections: what thousands of open keep-alive connections cost the exporter, and how
the scrapes served meanwhile fare.

Each connection sends one request (`GET /healthz`), reads the answer and then stays open and
silent, as a kept-alive client between requests does; the exporter keeps such a connection for
its idle timeout (300 s), longer than this benchmark. The connections are opened one after the
other, while a scraper scrapes /metrics on a connection of its own (gzip, as Prometheus asks),
a scrape every `PAUSE` seconds; then, with all of them open, the same scraper goes on. Resident
memory (VmRSS) is read before, with every connection open, and after they are closed; kernel
socket buffers are not part of it. At the end a sample of the idle connections is asked again,
to show they were kept.

The exporter tracks N jobs with TTLs of a day, so no fetch runs meanwhile.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import threading
import time
from dataclasses import dataclass, field

from bench import common
from bench.common import median, ms, table
from tests.support import connections_held, threads

LONG_TTL = "86400"
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
PAUSE = 0.02
"""Seconds between scrapes. Not back to back: in this one process a scraper that never waits
would hold the interpreter lock against the thread opening the connections."""


@dataclass
class Scrapes:
    """Scrape latencies of one phase, in seconds."""

    times: list[float] = field(default_factory=list)
    failures: int = 0

    def row(self, name: str) -> list[object]:
        return [
            name,
            len(self.times),
            self.failures,
            ms(median(self.times)),
            ms(percentile(self.times, 0.99)),
            ms(max(self.times, default=float("nan"))),
        ]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class IdleRun:
    jobs: int
    connections: int
    open_seconds: float
    rss_before: float
    rss_open: float
    rss_closed: float
    held: int
    threads_open: int
    kept: int
    asked_again: int
    baseline: Scrapes
    while_opening: Scrapes
    while_open: Scrapes


def raise_fd_limit(needed: int) -> None:
    """Raise this process's open-file limit (children inherit it) to what `needed` takes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(f"open-file limit {soft} is below the {needed} this needs")


def scrape_for(port: int, stop: threading.Event, into: Scrapes) -> None:
    """Scrape every `PAUSE` seconds on one keep-alive connection until `stop`."""
    headers = common.scrape_headers(gzip=True, timeout=10)
    with common.Scraper(port, timeout=60) as scraper:
        while not stop.wait(PAUSE):
            try:
                status, _, seconds = scraper.get("/metrics", headers)
            except OSError:
                into.failures += 1
                continue
            if status == 200:
                into.times.append(seconds)
            else:
                into.failures += 1


def scrape_phase(port: int, seconds: float) -> Scrapes:
    stop, got = threading.Event(), Scrapes()
    thread = threading.Thread(target=scrape_for, args=(port, stop, got), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(60)
    return got


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections, each having had one answer, then left idle."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            opened.append(sock)
            sock.sendall(REQUEST)
            if not read_answer(sock).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("idle connection: /healthz did not answer 200")
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length (what `/healthz` sends), head and body."""
    data = b""
    while True:
        head, found, body = data.partition(b"\r\n\r\n")
        if found:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, text = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(text)
            if len(body) >= length:
                return data
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def idle_run(jobs: int, connections: int, phase_seconds: float = 5.0) -> IdleRun:
    raise_fd_limit(connections + 1024)
    with contextlib.ExitStack() as stack:
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        flags = ["--cache-ttl", LONG_TTL, "--terminal-cache-ttl", LONG_TTL]
        exporter = common.start_exporter(stack, simulator, common.bulk_job_ids(jobs), flags=flags)
        common.full_scrape(exporter, jobs)
        baseline = scrape_phase(exporter.port, phase_seconds)
        rss_before = exporter.rss_mib()

        stop, while_opening = threading.Event(), Scrapes()
        scraper = threading.Thread(
            target=scrape_for, args=(exporter.port, stop, while_opening), daemon=True
        )
        scraper.start()
        started = time.monotonic()
        try:
            idle = open_idle(exporter.port, connections)
        finally:
            stop.set()
            scraper.join(60)
        open_seconds = time.monotonic() - started
        try:
            while_open = scrape_phase(exporter.port, phase_seconds)
            rss_open = exporter.rss_mib()
            held = connections_held(exporter.port)
            threads_open = threads(exporter.pid)
            sample = idle[:: max(1, connections // 100)]
            kept = 0
            for sock in sample:
                sock.sendall(REQUEST)
                kept += read_answer(sock).startswith(b"HTTP/1.1 200")
        finally:
            for sock in idle:
                sock.close()
        time.sleep(2)  # the exporter notices the closes
        return IdleRun(
            jobs=jobs,
            connections=connections,
            open_seconds=open_seconds,
            rss_before=rss_before,
            rss_open=rss_open,
            rss_closed=exporter.rss_mib(),
            held=held,
            threads_open=threads_open,
            kept=kept,
            asked_again=len(sample),
            baseline=baseline,
            while_opening=while_opening,
            while_open=while_open,
        )


def run(jobs: int, connections: int) -> str:
    got = idle_run(jobs, connections)
    per_connection = (got.rss_open - got.rss_before) * 1024 / got.connections
    out = table(
        ["measure", "value"],
        [
            ("tracked jobs", got.jobs),
            ("idle connections opened", got.connections),
            ("seconds to open them (one after the other)", got.open_seconds),
            ("connections the exporter holds (from /proc/net/tcp)", got.held),
            ("exporter threads with them open", got.threads_open),
            ("RSS before (MiB)", got.rss_before),
            ("RSS with them open (MiB)", got.rss_open),
            ("RSS per idle connection (KiB)", per_connection),
            ("RSS after closing them (MiB)", got.rss_closed),
            ("idle connections asked again / answered", f"{got.asked_again} / {got.kept}"),
        ],
        f"{connections} idle keep-alive connections ({jobs} jobs tracked; load average "
        f"{common.load_average()} at the end)",
    )
    out += "\n" + table(
        [
            f"gzip scrapes of /metrics, one every {PAUSE * 1000:g} ms",
            "scrapes",
            "failed",
            "median ms",
            "p99 ms",
            "max ms",
        ],
        [
            got.baseline.row("before, no idle connection"),
            got.while_opening.row(f"while opening the {connections}"),
            got.while_open.row(f"with the {connections} open"),
        ],
        "Scrapes meanwhile, on a connection of their own",
    )
    return out
