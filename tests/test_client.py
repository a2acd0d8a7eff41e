"""The client against the simulator over real sockets: every failure lands in its class."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.client import ApiKey, BackedOff, CerbyClient, FetchError, classify_status
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import Job
from cerby_exporter.simulator import Faults, Simulator
from tests.support import API_KEY, FAILED, FINISHED, MISSING


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (200, None),
        (204, None),
        (301, "invalid_response"),
        (302, "invalid_response"),
        (400, "invalid_response"),
        (401, "unauthorized"),
        (403, "unauthorized"),
        (404, "not_found"),
        (409, "invalid_response"),
        (429, "rate_limited"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_classify_status(code: int, reason: str | None) -> None:
    assert classify_status(code) == reason


def make_client(
    base_url: str, key: str = API_KEY, timeout: float = 2.0, retries: int = 0, **kwargs: Any
) -> tuple[CerbyClient, ExporterMetrics, RateLimitGate]:
    metrics = ExporterMetrics()
    gate = RateLimitGate(time.time)
    client = CerbyClient(
        base_url,
        ApiKey(key, None, lambda _key: None),
        metrics,
        gate,
        request_timeout=timeout,
        max_connections=4,
        retries=retries,
        rate_limit_backoff=300,
        sleep=lambda _s: None,
        **kwargs,
    )
    return client, metrics, gate


def fetch(client: CerbyClient, job_id: str = FINISHED) -> Job | FetchError:
    return client.fetch_job(job_id, time.monotonic() + 30)[0]


def test_fetches_a_job_with_the_key_header(simulator: Simulator) -> None:
    client, metrics, _ = make_client(simulator.base_url)
    result = fetch(client, FAILED)
    assert isinstance(result, Job)
    assert result.status == "error"
    assert result.trigger == "user_deprovisioned"
    assert metrics.responses() == {"200": 1}
    assert simulator.workspace.stats()["by_job"] == {FAILED: 1}


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        (Faults(status=500), "server_error"),
        (Faults(status=503), "server_error"),
        (Faults(status=403), "unauthorized"),
        (Faults(status=400), "invalid_response"),
        (Faults(malformed=True), "invalid_response"),
        (Faults(fault="truncated"), "transport"),
        (Faults(fault="oversize"), "invalid_response"),
        (Faults(fault="content_type"), "invalid_response"),
        (Faults(fault="reset"), "transport"),
        (Faults(fault="hang"), "timeout"),
    ],
)
def test_each_failure_is_classified(simulator: Simulator, faults: Faults, reason: str) -> None:
    simulator.workspace.set_faults(faults)
    client, _, _ = make_client(simulator.base_url, timeout=0.5)
    result = fetch(client)
    assert isinstance(result, FetchError)
    assert result.reason == reason


def test_nulls_and_unknown_fields_still_parse(simulator: Simulator) -> None:
    client, _, _ = make_client(simulator.base_url)
    simulator.workspace.set_faults(Faults(fault="nulls"))
    nulls = fetch(client)
    assert isinstance(nulls, Job)
    assert (nulls.status, nulls.workflow_type, nulls.can_retry) == ("unknown", None, None)
    simulator.workspace.set_faults(Faults(fault="unknown_fields"))
    odd = fetch(client)
    assert isinstance(odd, Job)
    assert (odd.status, odd.raw_status, odd.provider) == ("unknown", "paused", "twitter")


def test_not_found_and_wrong_key(simulator: Simulator) -> None:
    client, metrics, _ = make_client(simulator.base_url)
    missing = fetch(client, MISSING)
    assert isinstance(missing, FetchError)
    assert missing.reason == "not_found"
    bad_key, _, _ = make_client(simulator.base_url, key="wrong-key-0000")
    result, attempt = bad_key.fetch_job(FINISHED, time.monotonic() + 5)
    assert isinstance(result, FetchError)
    assert result.reason == "unauthorized"
    assert attempt.key_accepted is False
    assert metrics.responses() == {"404": 1}


def test_transient_failures_are_retried_within_bounds(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=502, count=2))
    client, metrics, _ = make_client(simulator.base_url, retries=2)
    result, attempt = client.fetch_job(FINISHED, time.monotonic() + 30)
    assert isinstance(result, Job)
    assert attempt.requests == 3
    assert metrics.responses() == {"502": 2, "200": 1}


def test_retries_stop_at_the_limit(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=500))
    client, _, _ = make_client(simulator.base_url, retries=3)
    result, attempt = client.fetch_job(FINISHED, time.monotonic() + 30)
    assert isinstance(result, FetchError)
    assert attempt.requests == 4


def test_retries_stop_at_the_deadline(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=500))
    client, _, _ = make_client(simulator.base_url, retries=5)
    _, attempt = client.fetch_job(FINISHED, time.monotonic() + 0.5)
    assert attempt.requests == 1


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409])
def test_other_4xx_are_never_retried(simulator: Simulator, code: int) -> None:
    simulator.workspace.set_faults(Faults(status=code))
    client, _, _ = make_client(simulator.base_url, retries=5)
    _, attempt = client.fetch_job(FINISHED, time.monotonic() + 30)
    assert attempt.requests == 1


def test_429_closes_the_gate_for_retry_after(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=429, retry_after="120", count=1))
    client, _, gate = make_client(simulator.base_url, retries=3)
    before = time.time()
    result = fetch(client)
    assert isinstance(result, FetchError)
    assert result.reason == "rate_limited"
    assert gate.closed()
    assert before + 119 <= gate.until <= time.time() + 121
    with pytest.raises(BackedOff):
        client.fetch_job(FINISHED, time.monotonic() + 30)
    assert simulator.workspace.stats()["requests"] == 1


def test_429_without_retry_after_uses_the_default(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=429))
    client, _, gate = make_client(simulator.base_url)
    fetch(client)
    assert gate.until == pytest.approx(time.time() + 300, abs=5)


class _Redirector(BaseHTTPRequestHandler):
    seen_keys: list[str | None] = []  # noqa: RUF012 - shared on purpose, read by the test

    def do_GET(self) -> None:
        self.seen_keys.append(self.headers.get("X-API-Key"))
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_redirects_are_not_followed(redirector: ThreadingHTTPServer) -> None:
    _Redirector.seen_keys.clear()
    client, _, _ = make_client(f"http://127.0.0.1:{redirector.server_address[1]}/api/v1")
    result = fetch(client)
    assert isinstance(result, FetchError)
    assert result.reason == "invalid_response"
    assert _Redirector.seen_keys == [API_KEY]  # one request: the Location was not visited


def test_connection_refused_is_transport() -> None:
    client, _, _ = make_client("http://127.0.0.1:9/api/v1")
    result, attempt = client.fetch_job(FINISHED, time.monotonic() + 5)
    assert isinstance(result, FetchError)
    assert result.reason == "transport"
    assert attempt.key_accepted is None


def test_check_key(simulator: Simulator) -> None:
    good, _, _ = make_client(simulator.base_url)
    assert good.check_key(time.monotonic() + 5) is True
    bad, _, _ = make_client(simulator.base_url, key="wrong-key-0000")
    assert bad.check_key(time.monotonic() + 5) is False


def test_key_file_is_reread_when_it_changes(simulator: Simulator, tmp_path: Any) -> None:
    path = tmp_path / "key"
    path.write_text("old-key-1234\n")
    seen: list[str] = []
    key = ApiKey(None, path, seen.append, recheck_seconds=0)
    assert key.get() == "old-key-1234"
    path.write_text(API_KEY + "\n")
    assert key.get() == API_KEY
    assert seen == ["old-key-1234", API_KEY]
    path.unlink()
    assert key.get() == API_KEY  # a vanished file keeps the key in use
