"""SIGTERM, as Kubernetes sends it: a scrape waiting on Cerby answers at once with what is
cached, the listener closes, idle keep-alive connections are closed, and the process exits 0,
however slow or hung Cerby is."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from cerby_exporter.app import SHUTDOWN_GRACE
from cerby_exporter.simulator import Faults, Simulator
from tests.support import (
    API_KEY,
    FINISHED,
    RUNNING,
    ExporterProcess,
    job_ids_with,
    parse_samples,
    read_until_closed,
    value,
)

JOBS = (FINISHED, RUNNING)
SCRAPE_TIMEOUT = 20.0
"""What the scrape tells the exporter it may take: far longer than the test waits."""


def exporter_args(simulator: Simulator, *extra: str) -> list[str]:
    return [
        "--api-url",
        simulator.base_url,
        "--job-ids",
        ",".join(JOBS),
        "--request-timeout",
        "30",
        "--retries",
        "0",
        *extra,
    ]


def scrape_into(url: str, out: list[httpx.Response]) -> None:
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": str(SCRAPE_TIMEOUT)}
    out.append(httpx.get(url + "/metrics", headers=headers, timeout=SCRAPE_TIMEOUT + 10))


def sigterm_during_a_scrape(exporter: ExporterProcess) -> tuple[httpx.Response, float]:
    """Start a scrape, SIGTERM while it waits on Cerby; the answer and how long after the
    signal it came."""
    answers: list[httpx.Response] = []
    scraper = threading.Thread(target=scrape_into, args=(exporter.url, answers))
    scraper.start()
    time.sleep(0.5)  # the scrape is waiting on Cerby now
    exporter.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    scraper.join(SCRAPE_TIMEOUT + 10)
    answered = time.monotonic() - signalled
    assert len(answers) == 1
    return answers[0], answered


def assert_stopped_cleanly(exporter: ExporterProcess) -> None:
    assert exporter.proc.wait(SHUTDOWN_GRACE + 5) == 0
    log = exporter.stderr()
    assert "received SIGTERM, stopping" in log
    assert log.splitlines()[-1].endswith("msg=stopped")  # the last line was written


LATENCY = 5.0
"""Seconds Cerby takes to answer in the cold test: the scrape must not wait for it."""


def test_sigterm_during_a_cold_scrape_answers_at_once_then_exits_0(
    simulator: Simulator, tmp_path: Path
) -> None:
    """Nothing is cached yet (the first fetches are still waiting on a slow Cerby): the scrape
    gets a 200 saying so, long before Cerby would have answered."""
    simulator.workspace.set_faults(Faults(latency=LATENCY))
    env = {"CERBY_API_KEY": API_KEY}
    with ExporterProcess(exporter_args(simulator), tmp_path, env) as exporter:
        exporter.wait_listening()
        answer, answered = sigterm_during_a_scrape(exporter)
        assert_stopped_cleanly(exporter)
    assert answer.status_code == 200
    assert answered < LATENCY / 2, f"answered {answered:.2f}s after SIGTERM"
    samples = parse_samples(answer.text)
    assert {value(samples, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {0.0}
    assert job_ids_with(samples, "cerby_job_info") == set()
    assert value(samples, "cerby_tracked_jobs", source="configured") == len(JOBS)
    # The scrape joined the fetches the start-up began; none was sent twice.
    assert simulator.workspace.by_job == dict.fromkeys(JOBS, 1)


def test_sigterm_during_a_scrape_hung_on_cerby_answers_from_the_cache(
    simulator: Simulator, tmp_path: Path
) -> None:
    """Every job was fetched once; the refresh hangs: the scrape answers with the cached data,
    still marked as fetched, instead of waiting out its deadline."""
    args = exporter_args(simulator, "--cache-ttl", "0.1", "--terminal-cache-ttl", "0.1")
    with ExporterProcess(args, tmp_path, {"CERBY_API_KEY": API_KEY}) as exporter:
        exporter.wait_ready()
        good = parse_samples(httpx.get(exporter.url + "/metrics", timeout=10).text)
        assert {value(good, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
        simulator.workspace.set_faults(Faults(fault="hang"))
        time.sleep(0.15)  # every cached job is due again
        answer, answered = sigterm_during_a_scrape(exporter)
        assert_stopped_cleanly(exporter)
    assert answer.status_code == 200
    assert answered < SCRAPE_TIMEOUT / 4, f"answered {answered:.2f}s after SIGTERM"
    samples = parse_samples(answer.text)
    assert {value(samples, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
    assert job_ids_with(samples, "cerby_job_info") == set(JOBS)
    assert simulator.workspace.stats()["injected"] == {"hang": len(JOBS)}


def test_after_sigterm_no_connection_is_taken_and_idle_ones_are_closed(tmp_path: Path) -> None:
    """A webhook delivery whose body is still arriving keeps the process in its grace period;
    meanwhile the port refuses connections and a kept-alive connection is closed."""
    with ExporterProcess(["--demo"], tmp_path, {"TMPDIR": str(tmp_path)}) as exporter:
        exporter.wait_ready()
        address = ("127.0.0.1", exporter.port)
        with (
            socket.create_connection(address, timeout=5) as idle,
            socket.create_connection(address, timeout=5) as pending,
        ):
            idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert idle.recv(4096).endswith(b"\r\n\r\nok\n")  # answered, kept alive
            pending.sendall(
                b"POST /webhooks/cerby HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"
            )
            time.sleep(0.3)  # the receiver is reading the body
            exporter.proc.send_signal(signal.SIGTERM)

            closed = read_until_closed(idle, timeout=SHUTDOWN_GRACE / 2)
            assert closed.closed
            assert closed.received == b""
            assert exporter.proc.poll() is None  # still in its grace period, yet:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(address, timeout=2).close()

            # The delivery never finishes: it is dropped at the end of the grace period (Cerby
            # retries it), and the process exits 0.
            assert read_until_closed(pending, timeout=SHUTDOWN_GRACE + 5).closed
            assert_stopped_cleanly(exporter)


def test_sigterm_when_idle_exits_0_without_waiting_out_the_grace(
    simulator: Simulator, tmp_path: Path
) -> None:
    args = ["--api-url", simulator.base_url, "--job-ids", FINISHED]
    with ExporterProcess(args, tmp_path, {"CERBY_API_KEY": API_KEY}) as exporter:
        exporter.wait_ready()
        started = time.monotonic()
        assert exporter.terminate() == 0
        assert time.monotonic() - started < SHUTDOWN_GRACE
    with pytest.raises(httpx.TransportError):
        httpx.get(exporter.url + "/healthz", timeout=2)
