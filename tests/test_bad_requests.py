"""Whatever a client sends, the exporter answers with the right refusal and asks Cerby nothing;
whatever Cerby sends, the exposition stays valid for Prometheus' own parser (promtool)."""

from __future__ import annotations

import email.utils
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser

from cerby_exporter.simulator import Simulator
from tests.e2e import parse_samples, value
from tests.support import FAILED, FINISHED, RUNNING, Running, settings_for

Factory = Callable[..., Running]
openmetrics_families = cast(
    Callable[[str], Iterator[Metric]], openmetrics_parser.text_string_to_metric_families
)
JOBS = (FINISHED, RUNNING, FAILED)


@pytest.fixture
def running(simulator: Simulator, exporter_factory: Factory, isolated_env: Path) -> Running:
    exporter = exporter_factory(**settings_for(simulator, job_ids=JOBS))
    assert exporter.get("/metrics").status_code == 200  # everything cached from here on
    return exporter


@pytest.mark.parametrize(
    "query",
    [
        "",
        "target=",
        "target=not-a-job",
        "target=../../api/v1/jobs/" + FINISHED,
        "target=" + FINISHED + "/../x",
        "target=" + FINISHED + "%0a",
        "target=" + FINISHED[:-1],
        "target=" + FINISHED + "&target=" + RUNNING,
        "target=%00",
        "other=" + FINISHED,
    ],
)
def test_probe_with_a_bad_target_is_400_and_calls_nobody(
    query: str, running: Running, simulator: Simulator
) -> None:
    before = simulator.workspace.requests
    answer = running.get("/probe?" + query)
    assert answer.status_code == 400
    assert "target must be one job ID" in answer.text
    assert simulator.workspace.requests == before


def test_probe_with_a_good_target_answers(running: Running, simulator: Simulator) -> None:
    answer = running.get("/probe?target=" + FINISHED.upper())
    assert answer.status_code == 200
    assert value(parse_samples(answer.text), "cerby_job_fetch_success", job_id=FINISHED) == 1


@pytest.mark.parametrize(
    "path", ["/nope", "/metrics/", "/metrics/x", "/Metrics", "/probe/" + FINISHED, "/.env", "/%2e"]
)
def test_unknown_paths_are_404(path: str, running: Running, simulator: Simulator) -> None:
    before = simulator.workspace.requests
    answer = running.get(path)
    assert answer.status_code == 404
    assert simulator.workspace.requests == before


@pytest.mark.parametrize(
    "method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO"]
)
def test_other_methods_are_405(method: str, running: Running) -> None:
    answer = httpx.request(method, running.url + "/metrics", content=b"x" * 10, timeout=10)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET, HEAD"


def test_head_is_get_without_a_body(running: Running) -> None:
    answer = httpx.head(running.url + "/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.content == b""
    assert int(answer.headers["Content-Length"]) > 1000


def test_a_refused_body_does_not_poison_the_connection(running: Running) -> None:
    """A 405 to a request with a body closes the connection, so the body is never read as the
    next request."""
    received = raw_exchange(
        running,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n"
        b"GET /nope HTTP/1.1\r\n\r\n\r\n",
    )
    assert received.startswith(b"HTTP/1.1 405 ")
    assert received.count(b"HTTP/1.1 ") == 1


def test_oversize_query_strings_are_refused(running: Running, simulator: Simulator) -> None:
    before = simulator.workspace.requests
    assert running.get("/metrics?" + "a" * 2048).status_code == 200
    assert running.get("/metrics?" + "a" * 2049).status_code == 414
    assert running.get("/probe?target=" + FINISHED + "&pad=" + "a" * 4000).status_code == 414
    assert simulator.workspace.requests == before


def raw_exchange(running: Running, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", running.server.port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_an_oversize_request_line_or_header_is_refused(running: Running) -> None:
    line = b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert raw_exchange(running, line).startswith(b"HTTP/1.1 414 ")
    answer = httpx.get(running.url + "/metrics", headers={"X-Big": "b" * 70000}, timeout=10)
    assert answer.status_code == 431
    assert running.get("/healthz").status_code == 200


NASTY: dict[str, Any] = {
    "workflowType": 'rotate "all"\\now',
    "trigger": "line one\nline two <img src=x onerror=alert(1)>",
    "status": "error",
    "account": {
        "id": "tab\there\rcr",
        "name": 'Zoë "Ünïcødé" \\ 名前 😀 <script>alert(1)</script>',
        "provider": "\\\\server\\share\n",
    },
    "errorDetails": {"errorType": 'quote " backslash \\ newline \n end', "userRequired": None},
}


def test_label_values_are_escaped_for_prometheus(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    simulator.workspace.set_job(RUNNING, NASTY)
    running = exporter_factory(**settings_for(simulator, job_ids=JOBS))
    text = running.get("/metrics").text

    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == b""
    assert checked.stderr == b""

    # Read back by a parser, every value is exactly what Cerby sent.
    samples = parse_samples(text)
    info = value(
        samples,
        "cerby_job_info",
        job_id=RUNNING,
        workflow_type=NASTY["workflowType"],
        provider=NASTY["account"]["provider"],
        trigger=NASTY["trigger"],
        account_id=NASTY["account"]["id"],
        account_name=NASTY["account"]["name"],
    )
    assert info == 1
    error_info = value(
        samples,
        "cerby_job_error_info",
        job_id=RUNNING,
        error_type=NASTY["errorDetails"]["errorType"],
        user_required="",
    )
    assert error_info == 1
    assert text.count("\n# TYPE cerby_job_info gauge\n") == 1
    # No value broke a line: each line is a comment or a sample.
    for line in text.rstrip("\n").split("\n"):
        assert line.startswith(("# HELP ", "# TYPE ", "cerby_")), line

    openmetrics = running.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ).text
    families = {f.name: f for f in openmetrics_families(openmetrics)}
    labels = [s.labels for s in families["cerby_job_info"].samples if s.labels["job_id"] == RUNNING]
    assert labels[0]["account_name"] == NASTY["account"]["name"]
    assert labels[0]["trigger"] == NASTY["trigger"]

    probe = running.get("/probe?target=" + RUNNING).text
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=probe.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    page = running.get("/").text  # the landing page shows the trigger: escaped as HTML
    assert "<img" not in page
    assert "line two &lt;img src=x onerror=alert(1)&gt;" in page


def responses_in(received: bytes) -> list[bytes]:
    """Status lines of the responses in a raw exchange, in order."""
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", received)


def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    received = raw_exchange(
        running,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert responses_in(received) == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 200 OK",
    ]
    assert received.endswith(b"Connection: close\r\n\r\nready\n")


def test_http_1_0_closes_unless_asked_to_keep_alive(running: Running) -> None:
    received = raw_exchange(running, b"GET /healthz HTTP/1.0\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n")
    assert responses_in(received) == [b"HTTP/1.1 200 OK"]
    assert b"\r\nConnection: close\r\n" in received
    received = raw_exchange(
        running,
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
    )
    assert responses_in(received) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert received.count(b"\r\nConnection: keep-alive\r\n") == 1


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"400 Bad Request"),
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", b"505 HTTP Version Not Supported"),
        (b"GET /healthz\r\n\r\n", b"400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", b"400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", b"400 Bad Request"),
    ],
)
def test_malformed_requests_get_one_answer_and_a_closed_connection(
    running: Running, request_bytes: bytes, status: bytes
) -> None:
    received = raw_exchange(running, request_bytes + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses_in(received) == [b"HTTP/1.1 " + status]
    assert b"\r\nConnection: close\r\n" in received


def test_a_malformed_target_is_400_and_the_connection_stays_usable(running: Running) -> None:
    received = raw_exchange(
        running,
        b"GET healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert responses_in(received) == [b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 200 OK"]
    assert b"400 malformed request target\n" in received


def test_a_get_body_is_skipped_and_the_connection_kept(running: Running) -> None:
    received = raw_exchange(
        running,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\nGET /nope HTTP/1.1\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert responses_in(received) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    chunked = raw_exchange(
        running,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert responses_in(chunked) == [b"HTTP/1.1 200 OK"]  # answered, then closed unread


def test_response_heads_name_the_exporter_and_the_date(running: Running) -> None:
    answer = httpx.get(running.url + "/healthz", timeout=10)
    assert answer.headers["server"].startswith("cerby-exporter/")
    assert email.utils.parsedate_to_datetime(answer.headers["date"]).tzinfo is not None
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["content-length"] == "3"
    assert answer.text == "ok\n"
