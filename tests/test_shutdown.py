"""SIGTERM, as Kubernetes sends it: scrapes in flight finish with a 200, then exit 0 promptly,
even when Cerby is hanging and fetches are still waiting on it."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from cerby_exporter.simulator import Faults, Simulator
from tests.e2e import ExporterProcess
from tests.support import API_KEY, FINISHED, RUNNING


def slow_scrape(url: str, scrape_timeout: float, out: list[httpx.Response]) -> None:
    out.append(
        httpx.get(
            url + "/metrics",
            headers={"X-Prometheus-Scrape-Timeout-Seconds": str(scrape_timeout)},
            timeout=30,
        )
    )


@pytest.mark.parametrize(
    ("faults", "request_timeout"),
    [
        (Faults(latency=1.5), "5"),  # Cerby is slow: the scrape finishes with fresh data
        (Faults(fault="hang"), "30"),  # Cerby hangs: the scrape ends at its deadline
    ],
    ids=["slow", "hanging"],
)
def test_sigterm_lets_the_scrape_finish_then_exits_0(
    faults: Faults, request_timeout: str, simulator: Simulator, tmp_path: Path
) -> None:
    args = [
        "--api-url",
        simulator.base_url,
        "--job-ids",
        f"{FINISHED},{RUNNING}",
        "--cache-ttl",
        "0.1",
        "--terminal-cache-ttl",
        "0.1",
        "--request-timeout",
        request_timeout,
        "--retries",
        "0",
    ]
    with ExporterProcess(args, tmp_path, {"CERBY_API_KEY": API_KEY}) as exporter:
        exporter.wait_ready()
        simulator.workspace.set_faults(faults)
        time.sleep(0.15)
        answers: list[httpx.Response] = []
        scraper = threading.Thread(target=slow_scrape, args=(exporter.url, 3.0, answers))
        scraper.start()
        time.sleep(0.5)  # the scrape is waiting on Cerby now
        assert simulator.workspace.requests > 0
        exporter.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        scraper.join(10)
        code = exporter.proc.wait(10)
        exited = time.monotonic() - signalled
    assert len(answers) == 1
    assert answers[0].status_code == 200
    assert "cerby_up" in answers[0].text
    assert answers[0].headers.get("connection") == "close"
    assert code == 0
    assert exited < 4.0, f"exit took {exited:.2f}s after SIGTERM"
    log = exporter.stderr()
    assert "received SIGTERM, stopping" in log
    assert log.splitlines()[-1].endswith("msg=stopped")  # the last line was written


def test_sigterm_when_idle_exits_0_at_once(simulator: Simulator, tmp_path: Path) -> None:
    args = ["--api-url", simulator.base_url, "--job-ids", FINISHED]
    with ExporterProcess(args, tmp_path, {"CERBY_API_KEY": API_KEY}) as exporter:
        exporter.wait_ready()
        started = time.monotonic()
        assert exporter.terminate() == 0
        assert time.monotonic() - started < 2
    with pytest.raises(httpx.TransportError):
        httpx.get(exporter.url + "/healthz", timeout=2)
