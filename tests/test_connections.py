"""Connections as an exporter process meets them on a real port: thousands held open idle or
trickling a request in a byte at a time, odd but legal requests, and twenty Prometheus servers
on keep-alive connections for a minute. One event loop serves them all, with no thread per
connection, and a scrape never waits behind them.

Scrape latency is asserted only where a client would notice it (a scrape within 1 s while the
connections are held, within 2 s while they all close); the minute of load asserts correctness
only: every answer whole, and Cerby asked exactly as often as the refresh schedule says.
"""

from __future__ import annotations

import gzip
import http.client
import resource
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from cerby_exporter.simulator import bulk_jobs, demo_job_ids
from tests.support import (
    ExporterProcess,
    SimulatorProcess,
    connections_held,
    parse_samples,
    raw_exchange,
    read_until_closed,
    threads,
    value,
    wait_for,
)

MAX_THREADS = 40
"""The exporter's threads stay under this however many connections it holds."""
IDLE_CONNECTIONS = 3000
SLOW_CLIENTS = 1000


@pytest.fixture(scope="module", autouse=True)
def _descriptors_for_thousands() -> Iterator[None]:
    """Thousands of connections need as many descriptors, here and in the exporter, which
    inherits this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    assert wanted >= IDLE_CONNECTIONS + 1000, f"RLIMIT_NOFILE hard limit {hard} is too low"
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def demo_exporter(workdir: Path) -> Iterator[ExporterProcess]:
    """The exporter on its embedded demo workspace, ready; its temporary files in `workdir`.
    It must exit 0 when told to stop, however many connections it was handed."""
    with ExporterProcess(["--demo"], workdir, {"TMPDIR": str(workdir)}) as exporter:
        exporter.wait_ready()
        yield exporter
        assert exporter.terminate() == 0


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[ExporterProcess]:
    with demo_exporter(tmp_path) as exporter:
        yield exporter


@pytest.fixture(scope="module")
def shared_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    with demo_exporter(tmp_path_factory.mktemp("demo")) as exporter:
        yield exporter


def timed_scrape(url: str) -> tuple[httpx.Response, float]:
    """One scrape on a new connection, and the seconds until its whole answer was in."""
    started = time.monotonic()
    answer = httpx.get(url + "/metrics", timeout=10)
    return answer, time.monotonic() - started


def hold_connections(exporter: ExporterProcess, count: int) -> list[socket.socket]:
    """`count` connections the exporter has accepted. They are opened a hundred at a time, each
    batch once the exporter holds the one before, so that the listen backlog never overflows
    (a dropped SYN costs the client a second's retransmission: not what is under test)."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            for _ in range(min(100, count - len(held))):
                held.append(socket.create_connection(("127.0.0.1", exporter.port), timeout=10))
            wait_for(
                f"the exporter to accept {len(held)} connections",
                lambda: connections_held(exporter.port) >= len(held),
                timeout=10,
                interval=0.01,
            )
    except BaseException:
        close_all(held)
        raise
    return held


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_idle_connections_by_the_thousand_cost_no_thread_and_delay_no_scrape(
    demo: ExporterProcess,
) -> None:
    pid = demo.proc.pid
    idle = hold_connections(demo, IDLE_CONNECTIONS)
    try:
        answer, seconds = timed_scrape(demo.url)
        assert answer.status_code == 200
        assert seconds < 1.0, f"scrape took {seconds:.2f}s with {IDLE_CONNECTIONS} idle"
        open_now = value(parse_samples(answer.text), "process_open_fds")
        assert open_now is not None
        assert open_now >= IDLE_CONNECTIONS
        assert threads(pid) < MAX_THREADS

        # Every idle connection closes at once, while scrapes go on.
        scrapes: list[tuple[int, float]] = []
        started = threading.Event()
        closing_done = threading.Event()

        def scrape_until_done() -> None:
            while True:
                started.set()
                answer, seconds = timed_scrape(demo.url)
                scrapes.append((answer.status_code, seconds))
                if closing_done.is_set():
                    return

        with ThreadPoolExecutor(1) as pool:
            scraping = pool.submit(scrape_until_done)
            assert started.wait(10)
            close_all(idle)
            wait_for(
                "the exporter to let go of the closed connections",
                lambda: connections_held(demo.port) < 10,
                timeout=10,
                interval=0.01,
            )
            closing_done.set()
            scraping.result(30)
    finally:
        close_all(idle)
    assert scrapes
    assert {status for status, _ in scrapes} == {200}
    slowest = max(seconds for _, seconds in scrapes)
    assert slowest < 2.0, f"a scrape took {slowest:.2f}s while {IDLE_CONNECTIONS} closed"


SLOW_HEAD = b"GET /healthz HTTP/1.0\r\n\r\n"
BYTE_EVERY = 0.5
"""Seconds between two bytes of a slow client's request head."""


def trickle(clients: list[socket.socket], stop: threading.Event) -> None:
    """One loop for every slow client: the next byte of the head to each, then a pause."""
    for byte in SLOW_HEAD:
        for sock in clients:
            sock.send(bytes([byte]))
        if stop.wait(BYTE_EVERY):
            return


def test_clients_sending_a_byte_at_a_time_delay_no_scrape(demo: ExporterProcess) -> None:
    """A thousand clients each take seconds over their request head: scrapes are answered in
    the meantime, no thread is spent waiting on them, and each slow request is answered once
    its head is complete."""
    pid = demo.proc.pid
    clients = hold_connections(demo, SLOW_CLIENTS)
    stop = threading.Event()
    sender = threading.Thread(target=trickle, args=(clients, stop))
    scrapes: list[tuple[int, float, int]] = []
    try:
        sender.start()
        while sender.is_alive():
            answer, seconds = timed_scrape(demo.url)
            scrapes.append((answer.status_code, seconds, threads(pid)))
            time.sleep(BYTE_EVERY)
        deadline = time.monotonic() + 10
        answers = [read_until_closed(c, max(0.01, deadline - time.monotonic())) for c in clients]
    finally:
        stop.set()
        sender.join(10)
        close_all(clients)
    assert len(scrapes) >= 2  # the head takes seconds to send: scrapes ran while it did
    assert {status for status, _, _ in scrapes} == {200}
    slowest = max(seconds for _, seconds, _ in scrapes)
    assert slowest < 1.0, f"a scrape took {slowest:.2f}s among {SLOW_CLIENTS} slow clients"
    assert max(count for _, _, count in scrapes) < MAX_THREADS
    assert {tuple(a.statuses) for a in answers} == {(200,)}
    assert all(a.closed and a.received.endswith(b"\r\n\r\nok\n") for a in answers)


CLOSE = b"Host: x\r\nConnection: close\r\n\r\n"
DEMO_JOB = demo_job_ids()[0]
ODD_REQUESTS = {
    "40 query fields on /metrics": (
        b"GET /metrics?" + b"&".join([b"a=1"] * 40) + b" HTTP/1.1\r\n" + CLOSE,
        ([200],),
        b"\ncerby_up ",
    ),
    "40 query fields on /probe": (
        f"GET /probe?target={DEMO_JOB}{'&x' * 39} HTTP/1.1\r\n".encode() + CLOSE,
        ([200],),
        f'job_id="{DEMO_JOB}"'.encode(),
    ),
    "Expect: 100-continue on a GET": (
        b"GET /healthz HTTP/1.1\r\nExpect: 100-continue\r\n" + CLOSE,
        ([100, 200], [200]),
        b"\r\n\r\nok\n",
    ),
    "Content-Length and Transfer-Encoding": (
        b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
        + CLOSE
        + b"0\r\n\r\n",
        ([400],),
        b"",
    ),
}


@pytest.mark.parametrize(
    ("request_bytes", "accepted", "body_part"), ODD_REQUESTS.values(), ids=ODD_REQUESTS.keys()
)
def test_odd_requests_get_an_answer_not_a_hang(
    shared_demo: ExporterProcess,
    request_bytes: bytes,
    accepted: tuple[list[int], ...],
    body_part: bytes,
) -> None:
    exchange = raw_exchange(shared_demo.port, request_bytes, timeout=5)
    assert exchange.statuses in accepted, exchange.received[:300]
    assert body_part in exchange.received
    assert exchange.closed


JOBS = 1000
SCRAPERS = 20
CACHE_TTL = 15.0
SCRAPE_SECONDS = 60.0
SIM_KEY = "load-test-key-3c9e"
TRACKED = b'\ncerby_tracked_jobs{source="configured"} 1000.0\n'


def scrape_back_to_back(port: int, stop: threading.Event, out: list[str]) -> None:
    """Scrape on one keep-alive connection until told to stop, as a Prometheus server would
    without its pause; every answer must be a whole 200 on the same connection. Appends "ok"
    or what went wrong, one entry per scrape."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Accept-Encoding": "gzip", "X-Prometheus-Scrape-Timeout-Seconds": "10"}
    try:
        while not stop.is_set():
            try:
                connection.request("GET", "/metrics", headers=headers)
                answer = connection.getresponse()
                body = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                out.append(type(exc).__name__)
                connection.close()
                continue
            if answer.status != 200:
                out.append(f"HTTP {answer.status}")
            elif TRACKED not in gzip.decompress(body):
                out.append("incomplete exposition")
            elif connection.sock is None:
                out.append("connection not kept alive")
            else:
                out.append("ok")
    finally:
        connection.close()


def fetch_times(exporter: ExporterProcess) -> dict[str, float]:
    """When the data each job shows was fetched (wall clock), as a scrape reports it."""
    answer = httpx.get(exporter.url + "/metrics", timeout=30)
    assert answer.status_code == 200
    return {
        dict(labels)["job_id"]: at
        for (name, labels), at in parse_samples(answer.text).items()
        if name == "cerby_job_last_fetch_timestamp_seconds"
    }


@pytest.mark.slow
def test_twenty_scrapers_for_a_minute_cost_cerby_one_call_per_job_per_ttl(
    tmp_path: Path,
) -> None:
    """A thousand jobs, half finished (fetched once, cached for an hour) and half running,
    scraped back to back by twenty keep-alive scrapers: no answer fails, and each running job
    is fetched exactly once per TTL. The refresh schedule is fixed (`cache.next_due`): a job's
    refreshes fall due whole TTLs after its first fetch, so from its first and last fetch times
    the number of calls it cost follows exactly, however late each refresh came."""
    jobs = bulk_jobs(JOBS)
    running = {i for i, job in jobs.items() if job.timeline[0][1]["status"] == "running"}
    assert len(running) == JOBS // 2
    ids_file = tmp_path / "job-ids"
    ids_file.write_text("\n".join(jobs) + "\n")
    sim_args = ["--scenario", "bulk", "--jobs", str(JOBS), "--api-key", SIM_KEY]
    with SimulatorProcess(sim_args) as sim:
        args = [
            "--api-url",
            sim.base_url,
            "--job-ids-file",
            str(ids_file),
            "--cache-ttl",
            str(CACHE_TTL),
            "--terminal-cache-ttl",
            "3600",
        ]
        with ExporterProcess(args, tmp_path, {"CERBY_API_KEY": SIM_KEY}) as exporter:
            exporter.wait_ready()
            wait_for("every job fetched once", lambda: requests(sim) >= JOBS, 60, 0.1)
            first = fetch_times(exporter)
            assert requests(sim) == JOBS, "a job fell due before the scrapers started"

            stop = threading.Event()
            results: list[list[str]] = [[] for _ in range(SCRAPERS)]
            scrapers = [
                threading.Thread(target=scrape_back_to_back, args=(exporter.port, stop, out))
                for out in results
            ]
            for scraper in scrapers:
                scraper.start()
            most_threads = 0
            until = time.monotonic() + SCRAPE_SECONDS
            while time.monotonic() < until:
                most_threads = max(most_threads, threads(exporter.proc.pid))
                time.sleep(1.0)
            stop.set()
            for scraper in scrapers:
                scraper.join(60)
            last = fetch_times(exporter)  # waits for the fetches still under way
            calls = sim.stats()["by_job"]
            assert exporter.terminate() == 0

    assert all(out for out in results), "a scraper never got an answer"
    failures = [problem for out in results for problem in out if problem != "ok"]
    assert failures == []
    assert most_threads < MAX_THREADS
    assert isinstance(calls, dict)
    assert set(first) == set(last) == set(jobs)
    assert {calls.get(i, 0) for i in jobs if i not in running} == {1}
    assert {i for i in jobs if i not in running and last[i] != first[i]} == set()
    refreshes = {i: round((last[i] - first[i]) / CACHE_TTL) for i in running}
    assert {i: calls.get(i, 0) for i in running} == {i: 1 + n for i, n in refreshes.items()}
    assert min(refreshes.values()) >= SCRAPE_SECONDS // CACHE_TTL - 1  # due all the minute
    assert sum(calls.values()) == JOBS + sum(refreshes.values())


def requests(sim: SimulatorProcess) -> int:
    count = sim.stats()["requests"]
    assert isinstance(count, int)
    return count
