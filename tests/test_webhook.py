"""The webhook receiver over a real socket, with real signatures: every answer Cerby can get."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cerby_exporter.settings import Settings
from cerby_exporter.signatures import KeysSource
from cerby_exporter.simulator import Simulator
from cerby_exporter.state import StateStore
from tests.support import (
    API_KEY,
    FAILED,
    FINISHED,
    ExporterProcess,
    Running,
    Samples,
    WebhookKeys,
    envelope,
    free_port,
    job_attributes,
    parse_samples,
    settings_for,
    start_exporter,
    value,
    wait_for,
)

NEW_JOB = "55555555-6666-7777-8888-999999999999"
"""A job the simulated workspace has but no setting names: only a webhook can tell of it."""
PATH = "/webhooks/cerby"


@dataclass
class Receiving:
    running: Running
    keys: WebhookKeys
    simulator: Simulator
    state_path: Path

    def post(
        self, body: bytes, headers: dict[str, str] | list[tuple[str, str]] | None = None
    ) -> httpx.Response:
        if headers is None:
            headers = self.keys.headers(body)
        return httpx.post(self.running.url + PATH, content=body, headers=headers, timeout=10)

    def metrics(self) -> Samples:
        return parse_samples(self.running.get("/metrics").text)

    def result(self, name: str) -> float | None:
        return value(self.metrics(), "cerby_webhook_requests_total", result=name)


@pytest.fixture
def receiving(simulator: Simulator, tmp_path: Path) -> Iterator[Receiving]:
    simulator.workspace.set_job(
        NEW_JOB,
        job_attributes(
            status="error",
            trigger="user_deprovisioned",
            workflowType="revoke_access",
            errorDetails={"errorType": "BadCredentials", "userRequired": True},
        ),
    )
    keys = WebhookKeys(tmp_path / "keys.yaml").write()
    state_path = tmp_path / "state.sqlite"
    running = start_exporter(
        Settings(**settings_for(simulator, job_ids=(FINISHED,), webhook_keys_file=keys.path)),
        state=StateStore.open(state_path, busy_timeout=0.05),
        keys=KeysSource(keys.path, recheck_seconds=0.2),
    )
    try:
        yield Receiving(running, keys, simulator, state_path)
    finally:
        running.stop()


def test_an_event_for_a_job_configured_nowhere_is_tracked_and_fetched_before_any_scrape(
    receiving: Receiving,
) -> None:
    workspace = receiving.simulator.workspace
    answer = receiving.post(envelope(NEW_JOB))
    assert answer.status_code == 200
    assert answer.json() == {"result": "accepted"}
    wait_for("the new job fetched", lambda: workspace.stats()["by_job"].get(NEW_JOB) == 1, 5)
    parsed = receiving.metrics()
    assert (
        value(
            parsed,
            "cerby_job_status",
            job_id=NEW_JOB,
            workflow_type="revoke_access",
            provider="twitter",
            status="error",
        )
        == 1
    )
    assert value(parsed, "cerby_job_fetch_success", job_id=NEW_JOB) == 1
    assert value(parsed, "cerby_tracked_jobs", source="webhook") == 1
    assert value(parsed, "cerby_tracked_jobs", source="configured") == 1
    assert value(parsed, "cerby_webhook_requests_total", result="accepted") == 1
    labels = {"event_type": "automation.failed", "application": "tiktok"}
    assert value(parsed, "cerby_automation_events_total", **labels, error_code="BadCredentials")
    assert workspace.stats()["by_job"][NEW_JOB] == 1  # the scrape found it fresh
    last = value(parsed, "cerby_webhook_last_event_timestamp_seconds")
    assert last is not None
    assert abs(last - time.time()) < 60


def test_a_redelivery_is_acknowledged_and_counted_once(receiving: Receiving) -> None:
    body = envelope(NEW_JOB, event_id="0193f1d2-7c4e-7a21-9b8e-3f2a1c0d9e8f")
    assert receiving.post(body).json() == {"result": "accepted"}
    again = receiving.post(body)
    assert again.status_code == 200
    assert again.json() == {"result": "duplicate"}
    parsed = receiving.metrics()
    labels = {"event_type": "automation.failed", "application": "tiktok"}
    assert (
        value(parsed, "cerby_automation_events_total", **labels, error_code="BadCredentials") == 1
    )
    assert value(parsed, "cerby_webhook_requests_total", result="duplicate") == 1


def test_a_success_event_has_an_empty_error_code(receiving: Receiving) -> None:
    body = envelope(NEW_JOB, event_type="automation.succeeded", error_code=None)
    assert receiving.post(body).status_code == 200
    parsed = receiving.metrics()
    assert (
        value(
            parsed,
            "cerby_automation_events_total",
            event_type="automation.succeeded",
            application="tiktok",
            error_code="",
        )
        == 1
    )


def test_a_verified_event_without_a_job_is_ignored(receiving: Receiving) -> None:
    answer = receiving.post(envelope(None, event_type="account.created", error_code=None))
    assert answer.status_code == 200
    assert answer.json() == {"result": "ignored"}
    assert receiving.result("ignored") == 1
    assert value(receiving.metrics(), "cerby_tracked_jobs", source="webhook") == 0


@pytest.mark.parametrize(
    ("tamper", "status", "result"),
    [
        ("body", 401, "bad_signature"),
        ("signature", 401, "bad_signature"),
        ("no_signature", 401, "bad_signature"),
        ("old", 401, "stale_timestamp"),
        ("future", 401, "stale_timestamp"),
        ("unknown_key", 503, "unknown_key"),
        ("not_json", 400, "malformed"),
        ("not_an_envelope", 400, "malformed"),
    ],
)
def test_each_refusal_gets_its_answer_and_changes_nothing(
    receiving: Receiving, tamper: str, status: int, result: str
) -> None:
    body = envelope(NEW_JOB)
    headers = receiving.keys.headers(body)
    if tamper == "body":
        body = body.replace(b"tiktok", b"tiktoK")
    elif tamper == "signature":
        algorithm, _, signature = headers["X-Cerby-Signature"].partition("=")
        flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
        headers["X-Cerby-Signature"] = f"{algorithm}={flipped}"
    elif tamper == "no_signature":
        del headers["X-Cerby-Signature"], headers["X-Cerby-Signature-Key-Id"]
    elif tamper in ("old", "future"):
        at = time.time() + (-301 if tamper == "old" else 301)
        headers = receiving.keys.headers(body, at=at)
    elif tamper == "unknown_key":
        headers["X-Cerby-Signature-Key-Id"] = "99999999-0000-4000-8000-000000000009"
    elif tamper in ("not_json", "not_an_envelope"):
        body = b"{not json" if tamper == "not_json" else b'{"event_type": "automation.failed"}'
        headers = receiving.keys.headers(body)
    answer = receiving.post(body, headers)
    assert answer.status_code == status
    assert answer.json() == {"result": result}
    if status == 503:
        assert int(answer.headers["Retry-After"]) > 0
    parsed = receiving.metrics()
    assert value(parsed, "cerby_webhook_requests_total", result=result) == 1
    assert value(parsed, "cerby_webhook_requests_total", result="accepted") == 0
    assert value(parsed, "cerby_tracked_jobs", source="webhook") == 0
    assert receiving.simulator.workspace.stats()["by_job"].get(NEW_JOB) is None


def test_a_body_over_1_mib_is_413(receiving: Receiving) -> None:
    body = b'{"padding": "' + b"x" * (1024 * 1024) + b'"}'
    answer = receiving.post(body)
    assert answer.status_code == 413
    assert receiving.result("too_large") == 1


def test_an_event_that_cannot_be_stored_is_503_and_stored_on_the_retry(
    receiving: Receiving,
) -> None:
    body = envelope(NEW_JOB)
    with sqlite3.connect(receiving.state_path) as lock:
        lock.execute("BEGIN EXCLUSIVE")
        answer = receiving.post(body)
        assert answer.status_code == 503
        assert answer.json() == {"result": "unavailable"}
        assert int(answer.headers["Retry-After"]) > 0
        lock.rollback()
    assert receiving.result("unavailable") == 1
    assert value(receiving.metrics(), "cerby_tracked_jobs", source="webhook") == 0
    retried = receiving.post(body, receiving.keys.headers(body))
    assert retried.json() == {"result": "accepted"}


@pytest.mark.parametrize("shape", ["repeated", "comma-joined"])
def test_a_rotation_new_unknown_key_first_old_known_key_second(
    receiving: Receiving, shape: str
) -> None:
    body = envelope(NEW_JOB)
    old = receiving.keys.headers(body, algorithm="hmac-sha256")
    new_signature = "ed25519=" + "A" * 86
    new_key_id = "77777777-0000-4000-8000-000000000007"
    headers: list[tuple[str, str]] = [
        ("Content-Type", "application/json"),
        ("X-Cerby-Signature-Timestamp", old["X-Cerby-Signature-Timestamp"]),
    ]
    if shape == "repeated":
        headers += [
            ("X-Cerby-Signature", new_signature),
            ("X-Cerby-Signature", old["X-Cerby-Signature"]),
            ("X-Cerby-Signature-Key-Id", new_key_id),
            ("X-Cerby-Signature-Key-Id", old["X-Cerby-Signature-Key-Id"]),
        ]
    else:
        headers += [
            ("X-Cerby-Signature", f"{new_signature}, {old['X-Cerby-Signature']}"),
            ("X-Cerby-Signature-Key-Id", f"{new_key_id}, {old['X-Cerby-Signature-Key-Id']}"),
        ]
    answer = receiving.post(body, headers)
    assert answer.json() == {"result": "accepted"}


def test_the_epoch_milliseconds_reading_of_the_timestamp_verifies(receiving: Receiving) -> None:
    body = envelope(NEW_JOB)
    answer = receiving.post(body, receiving.keys.headers(body, form="millis"))
    assert answer.json() == {"result": "accepted"}


def test_a_keys_file_edited_while_running_takes_the_new_key_without_a_restart(
    receiving: Receiving,
) -> None:
    keys = receiving.keys
    keys.write(with_ed25519=False)
    wait_for(
        "the keys file reloaded",
        lambda: receiving.post(envelope(None, error_code=None)).status_code == 503,
        5,
    )
    body = envelope(NEW_JOB)
    refused = receiving.post(body, keys.headers(body))
    assert refused.json() == {"result": "unknown_key"}
    bad = keys.path.with_name("bad.yaml")
    bad.write_text("keys: [not, a, mapping\n")
    bad.replace(keys.path)  # a bad edit keeps the keys in force
    time.sleep(0.5)
    hmac_body = envelope(FAILED)
    assert receiving.post(hmac_body, keys.headers(hmac_body, algorithm="hmac-sha256")).json() == {
        "result": "accepted"
    }
    keys.write()
    wait_for(
        "the keys restored", lambda: receiving.post(body, keys.headers(body)).status_code == 200, 5
    )
    assert receiving.running.log.getvalue().count("webhook keys not reloaded") == 1


def test_other_methods_on_the_webhook_path_are_405_and_it_needs_no_basic_auth(
    receiving: Receiving,
) -> None:
    answer = receiving.running.get(PATH)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"
    assert httpx.post(receiving.running.url + "/metrics", timeout=10).status_code == 405


def test_kill_9_right_after_a_2xx_loses_nothing_and_a_restart_fetches_no_fresh_job_again(
    simulator: Simulator, tmp_path: Path
) -> None:
    later = "66666666-7777-8888-9999-aaaaaaaaaaaa"
    workspace = simulator.workspace
    for job in (NEW_JOB, later):
        workspace.set_job(job, job_attributes(status="error", workflowType="revoke_access"))
    keys = WebhookKeys(tmp_path / "keys.yaml").write()
    args = [
        "--api-url",
        simulator.base_url,
        "--job-ids",
        FINISHED,
        "--webhook.keys-file",
        str(keys.path),
        "--state.path",
        str(tmp_path / "state.sqlite"),
    ]
    env = {"CERBY_API_KEY": API_KEY}

    def post(url: str, body: bytes) -> httpx.Response:
        return httpx.post(url + PATH, content=body, headers=keys.headers(body), timeout=10)

    with ExporterProcess(args, tmp_path, env) as first:
        first.wait_ready()
        assert post(first.url, envelope(NEW_JOB)).json() == {"result": "accepted"}
        wait_for("the new job fetched", lambda: workspace.stats()["by_job"].get(NEW_JOB) == 1, 5)
        time.sleep(0.5)  # the fetched data reaches the state file in the background
        assert post(first.url, envelope(later)).status_code == 200
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
    with ExporterProcess(args, tmp_path, env) as second:
        second.wait_ready()
        parsed = parse_samples(httpx.get(second.url + "/metrics", timeout=30).text)
        assert value(parsed, "cerby_tracked_jobs", source="webhook") == 2
        for job in (NEW_JOB, later):
            assert value(parsed, "cerby_job_fetch_success", job_id=job) == 1
        assert workspace.stats()["by_job"][NEW_JOB] == 1  # fresh from the state file
        assert "state restored" in second.stderr()
        assert second.terminate() == 0


@pytest.mark.parametrize(
    "content",
    [b"this is not a database, just text\n" * 200, b"SQLite format 3\x00" + b"\xff" * 4000],
)
def test_a_corrupt_state_file_is_one_line_and_exit_2(tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "state.sqlite"
    state.write_bytes(content)
    with ExporterProcess(["--demo", "--state.path", str(state)], tmp_path) as exporter:
        assert exporter.proc.wait(30) == 2
        lines = exporter.stderr().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cerby-exporter: invalid --state.path / CERBY_STATE_PATH: ")
    assert str(state) in lines[0]
    assert "Traceback" not in exporter.stderr()
    assert state.read_bytes() == content


def test_a_listener_of_its_own_serves_the_webhook_path_and_nothing_else(
    simulator: Simulator, tmp_path: Path
) -> None:
    keys = WebhookKeys(tmp_path / "keys.yaml").write()
    simulator.workspace.set_job(NEW_JOB, job_attributes(status="running"))
    webhook_port = free_port()
    args = ["--api-url", simulator.base_url, "--webhook.keys-file", str(keys.path),
            "--state.path", str(tmp_path / "state.sqlite"),
            "--webhook.listen-address", f"127.0.0.1:{webhook_port}"]  # fmt: skip
    with ExporterProcess(args, tmp_path, {"CERBY_API_KEY": API_KEY}) as exporter:
        exporter.wait_ready()
        published = f"http://127.0.0.1:{webhook_port}"
        body = envelope(NEW_JOB)
        answer = httpx.post(published + PATH, content=body, headers=keys.headers(body))
        assert answer.json() == {"result": "accepted"}
        for path in ("/metrics", "/", "/probe?target=" + NEW_JOB, "/healthz"):
            assert httpx.get(published + path).status_code == 404, path
        assert httpx.get(published + PATH).status_code == 405
        parsed = parse_samples(httpx.get(exporter.url + "/metrics", timeout=30).text)
        assert value(parsed, "cerby_tracked_jobs", source="webhook") == 1
        assert f"{webhook_port}" in exporter.stderr()
        assert exporter.terminate() == 0
