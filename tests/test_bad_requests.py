"""Whatever a client sends, it gets an HTTP answer or a closed connection, never a hang, and a
refused request changes nothing: Cerby is not asked, the exporter's own counters stay where they
were, and the next request on a new connection is served. aiohttp's parser (llhttp) reads the
requests; what is asserted is what a client gets back, not how the parser words it. Whatever
Cerby sends, the exposition stays valid for Prometheus' own parser (promtool)."""

from __future__ import annotations

import email.utils
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser

from cerby_exporter.simulator import Simulator
from tests.support import (
    FAILED,
    FINISHED,
    RUNNING,
    Running,
    Samples,
    parse_samples,
    raw_exchange,
    settings_for,
    value,
)

Factory = Callable[..., Running]
openmetrics_families = cast(
    Callable[[str], Iterator[Metric]], openmetrics_parser.text_string_to_metric_families
)
JOBS = (FINISHED, RUNNING, FAILED)
GOOD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
"""A valid request, sent after a bad one on the same connection: it must not be answered."""
LAST = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
"""A valid request that ends a kept-alive exchange."""
CACHE_HITS = ("cerby_cache_requests_total", (("result", "hit"),))


@pytest.fixture
def running(simulator: Simulator, exporter_factory: Factory, isolated_env: Path) -> Running:
    exporter = exporter_factory(**settings_for(simulator, job_ids=JOBS))
    assert exporter.get("/metrics").status_code == 200  # everything cached from here on
    return exporter


def own_counters(running: Running) -> Samples:
    """The exporter's own series, read by a scrape: all but the scrape's duration."""
    samples = parse_samples(running.get("/metrics").text)
    return {
        key: v
        for key, v in samples.items()
        if key[0].startswith("cerby_") and key[0] != "cerby_scrape_duration_seconds"
    }


@contextmanager
def changes_nothing(running: Running, simulator: Simulator) -> Iterator[None]:
    """What the block sends is refused without effect: afterwards a new connection is served,
    Cerby was not asked, and every counter is where it was, but for the cache lookups of the
    second reading itself."""
    before = own_counters(running)
    requests = simulator.workspace.requests
    yield
    assert running.get("/healthz").status_code == 200
    after = own_counters(running)
    before[CACHE_HITS] += len(JOBS)
    assert after == before
    assert simulator.workspace.requests == requests


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
    "method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"]
)
def test_other_methods_are_405(method: str, running: Running, simulator: Simulator) -> None:
    with changes_nothing(running, simulator):
        answer = httpx.request(method, running.url + "/metrics", content=b"x" * 10, timeout=10)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET, HEAD"
    assert answer.text == "405 method not allowed\n"


def test_head_is_get_without_a_body(running: Running) -> None:
    answer = httpx.head(running.url + "/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.content == b""
    assert int(answer.headers["Content-Length"]) > 1000


def test_a_refused_body_is_skipped_not_read_as_a_request(
    running: Running, simulator: Simulator
) -> None:
    """The body of a refused POST looks like a request: it is read past, never answered."""
    with changes_nothing(running, simulator):
        exchange = raw_exchange(
            running.port,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n"
            b"GET /nope HTTP/1.1\r\n\r\n\r\n" + LAST,
        )
    assert exchange.statuses == [405, 200]
    assert exchange.closed


def test_oversize_query_strings_are_refused(running: Running, simulator: Simulator) -> None:
    assert running.get("/metrics?" + "a" * 2048).status_code == 200
    with changes_nothing(running, simulator):
        assert running.get("/metrics?" + "a" * 2049).status_code == 414
        assert running.get("/probe?target=" + FINISHED + "&pad=" + "a" * 4000).status_code == 414


MALFORMED = {
    "no Host in HTTP/1.1": b"GET /healthz HTTP/1.1\r\n\r\n",
    "unknown method": b"FOO /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "relative target": b"GET healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "asterisk target": b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
    "tab in target": b"GET /heal\tthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET /healthz HTTP/1.x\r\nHost: x\r\n\r\n",
    "bare LF line ends": b"GET /healthz HTTP/1.1\nHost: x\n\n",
    "folded header": b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    "space before colon": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    "negative Content-Length": b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "Content-Length overflow": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
    ),
    "two Content-Lengths": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    ),
    "Content-Length and Transfer-Encoding": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "unknown Transfer-Encoding": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
    ),
    "TLS on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(50),
    "request line over 8 KiB": b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header over 8 KiB": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"b" * 70000
    + b"\r\n\r\n",
    "too many headers": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: y\r\n" % n for n in range(200))
        + b"\r\n"
    ),
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_gets_one_400_then_a_closed_connection(
    running: Running, simulator: Simulator, request_bytes: bytes
) -> None:
    """The good request after the bad one is never answered: the connection ends with the 400."""
    with changes_nothing(running, simulator):
        exchange = raw_exchange(running.port, request_bytes + GOOD)
    assert exchange.statuses == [400]
    assert exchange.closed
    said = running.log.getvalue()
    assert "level=error" not in said  # the client got its answer; the log is not flooded
    assert "Traceback" not in said


@pytest.mark.parametrize(
    ("request_line", "status_line"),
    [(b"GET /healthz HTTP/2.0", b"HTTP/2.0 200 OK"), (b"GET /healthz", b"HTTP/0.9 200 OK")],
    ids=["HTTP/2.0", "no version"],
)
def test_other_http_versions_get_one_answer_then_a_closed_connection(
    running: Running, simulator: Simulator, request_line: bytes, status_line: bytes
) -> None:
    """llhttp reads these as requests of that version (0.9 for none) and aiohttp answers in
    kind, keeping no such connection alive: one answer, then the connection ends (anything sent
    after such a request gets a 400 instead, as after `Connection: close`)."""
    with changes_nothing(running, simulator):
        exchange = raw_exchange(running.port, request_line + b"\r\nHost: x\r\n\r\n")
    assert exchange.received.startswith(status_line + b"\r\n")
    assert exchange.received.endswith(b"\r\n\r\nok\n")
    assert exchange.closed


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
        assert line.startswith(("# HELP ", "# TYPE ", "cerby_", "process_")), line

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


def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    exchange = raw_exchange(
        running.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert exchange.statuses == [200, 404, 200]
    assert exchange.received.endswith(b"Connection: close\r\n\r\nready\n")
    assert exchange.closed


def test_http_1_0_closes_unless_asked_to_keep_alive(running: Running) -> None:
    exchange = raw_exchange(running.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert exchange.statuses == [200]
    assert exchange.received.endswith(b"\r\n\r\nok\n")
    assert b"keep-alive" not in exchange.received.lower()
    assert exchange.closed
    kept = raw_exchange(
        running.port,
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
    )
    assert kept.statuses == [200, 200]
    assert kept.received.count(b"\r\nConnection: keep-alive\r\n") == 1
    assert kept.closed


def test_a_get_body_is_skipped_and_the_connection_kept(running: Running) -> None:
    exchange = raw_exchange(
        running.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nGET /nope HTTP/1.1\r\n"
        + LAST,
    )
    assert exchange.statuses == [200, 200]
    assert exchange.closed
    chunked = raw_exchange(
        running.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"14\r\nGET /nope HTTP/1.1\r\n\r\n0\r\n\r\n" + LAST,
    )
    assert chunked.statuses == [200, 200]
    assert chunked.closed


def test_response_heads_name_the_exporter_and_the_date(running: Running) -> None:
    answer = httpx.get(running.url + "/healthz", timeout=10)
    assert answer.headers["server"].startswith("cerby-exporter/")
    assert email.utils.parsedate_to_datetime(answer.headers["date"]).tzinfo is not None
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["content-length"] == "3"
    assert answer.text == "ok\n"
