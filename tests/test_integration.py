"""Simulator and exporter over real sockets: every endpoint, asserted by value."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cerby_exporter.simulator import Faults, Simulator
from tests.support import (
    API_KEY,
    FAILED,
    FINISHED,
    MISSING,
    RUNNING,
    Running,
    Samples,
    job_attributes,
    openmetrics_families,
    parse_samples,
    settings_for,
    value,
)

Factory = Callable[..., Running]


def samples(text: str) -> Samples:
    return parse_samples(text)


def names(parsed: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for n, labels in parsed if n == name]


def wait_ready(running: Running) -> None:
    for _ in range(200):
        if running.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("exporter never became ready")


def test_metrics_show_each_job_by_value(simulator: Simulator, exporter_factory: Factory) -> None:
    running = exporter_factory(**settings_for(simulator))
    response = running.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    parsed = samples(response.text)
    kind = {"job_id": FAILED, "workflow_type": "revoke_access", "provider": "twitter"}
    assert value(parsed, "cerby_job_status", **kind, status="error") == 1
    assert value(parsed, "cerby_job_status", **kind, status="running") == 0
    assert value(parsed, "cerby_job_can_retry", **kind) == 0
    assert value(parsed, "cerby_job_error_info", job_id=FAILED, error_type="login_failed",
                 user_required="true") == 1  # fmt: skip
    info = [i for i in names(parsed, "cerby_job_info") if i["job_id"] == FAILED]
    account = {"account_id": "aaaaaaaa-0000-0000-0000-000000000001", "account_name": "Brand One"}
    assert info == [{**kind, "trigger": "user_deprovisioned", **account}]
    assert value(parsed, "cerby_job_created_timestamp_seconds", job_id=FAILED) == 1725569174.357
    assert value(parsed, "cerby_job_updated_timestamp_seconds", job_id=FAILED) == 1725569234.357
    fetched = value(parsed, "cerby_job_last_fetch_timestamp_seconds", job_id=FAILED)
    assert fetched is not None
    assert time.time() - 30 < fetched <= time.time()
    running_kind = {"job_id": RUNNING, "workflow_type": "setup_mfa", "provider": "twitter"}
    assert value(parsed, "cerby_job_status", **running_kind, status="running") == 1
    assert value(parsed, "cerby_job_fetch_success", job_id=FINISHED) == 1
    # The ID that answers 404 keeps one series, at 0, and nothing else.
    assert value(parsed, "cerby_job_fetch_success", job_id=MISSING) == 0
    assert not [key for key in parsed if ("job_id", MISSING) in key[1] and
                key[0] != "cerby_job_fetch_success"]  # fmt: skip
    assert value(parsed, "cerby_jobs", workflow_type="password_rotation", provider="twitter",
                 status="finished") == 1  # fmt: skip
    assert value(parsed, "cerby_jobs", workflow_type="setup_mfa", provider="twitter",
                 status="error") == 0  # fmt: skip
    assert value(parsed, "cerby_up") == 1
    assert value(parsed, "cerby_tracked_jobs", source="configured") == 4
    assert value(parsed, "cerby_stale_jobs") == 0
    assert value(parsed, "cerby_api_backoff_until_timestamp_seconds") == 0
    assert value(parsed, "cerby_job_fetch_errors_total", reason="not_found") == 1
    assert value(parsed, "cerby_job_fetch_errors_total", reason="timeout") == 0
    assert value(parsed, "cerby_api_requests_total", code="200") == 3
    assert value(parsed, "cerby_api_requests_total", code="404") == 1
    assert value(parsed, "cerby_api_request_duration_seconds_count") == 4
    duration = value(parsed, "cerby_scrape_duration_seconds")
    assert duration is not None
    assert 0 <= duration < 10
    assert names(parsed, "cerby_exporter_build_info")[0]["version"]


def test_help_says_data_is_cached_and_for_how_long(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    running = exporter_factory(**settings_for(simulator, cache_ttl=45, terminal_cache_ttl=1800))
    text = running.get("/metrics").text
    help_line = next(
        line for line in text.splitlines() if line.startswith("# HELP cerby_job_status")
    )
    assert "cached: 45s while in flight, 1800s once finished or failed" in help_line


def test_cache_serves_repeat_scrapes_and_counts_hits(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    running = exporter_factory(**settings_for(simulator))
    wait_ready(running)
    for _ in range(3):
        assert running.get("/metrics").status_code == 200
    stats = simulator.workspace.stats()
    assert stats["by_job"] == {FINISHED: 1, RUNNING: 1, FAILED: 1, MISSING: 1}
    parsed = samples(running.get("/metrics").text)
    # Four lookups a scrape: the warm-up's four misses, then hits for the rest.
    assert value(parsed, "cerby_cache_requests_total", result="miss") == 4
    assert value(parsed, "cerby_cache_requests_total", result="hit") == 16
    assert value(parsed, "cerby_cache_requests_total", result="stale") == 0


def test_two_concurrent_scrapes_make_one_api_call_per_job(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    simulator.workspace.set_faults(Faults(latency=0.4))
    running = exporter_factory(**settings_for(simulator, cache_ttl=1))
    wait_ready(running)
    time.sleep(1.1)  # every job, terminal ones aside, is due again
    before = simulator.workspace.stats()["by_job"]
    bodies: list[str] = []
    threads = [
        threading.Thread(target=lambda: bodies.append(running.get("/metrics").text))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    after = simulator.workspace.stats()["by_job"]
    made = {job: after[job] - before.get(job, 0) for job in after}
    assert made == {FINISHED: 0, RUNNING: 1, FAILED: 0, MISSING: 1}
    assert len(bodies) == 2
    for body in bodies:
        assert f'cerby_job_fetch_success{{job_id="{RUNNING}"}} 1' in body


def test_scrape_answers_before_prometheus_gives_up(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    simulator.workspace.set_faults(Faults(latency=3))
    running = exporter_factory(**settings_for(simulator, scrape_timeout_offset=0.2))
    started = time.monotonic()
    response = running.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"})
    took = time.monotonic() - started
    assert response.status_code == 200
    assert took < 1.0
    parsed = samples(response.text)
    assert value(parsed, "cerby_job_fetch_success", job_id=FINISHED) == 0  # nothing yet
    assert value(parsed, "cerby_tracked_jobs", source="configured") == 4


def test_probe_one_job_through_the_same_cache(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    running = exporter_factory(**settings_for(simulator))
    wait_ready(running)
    calls = simulator.workspace.stats()["requests"]
    response = running.get(f"/probe?target={FAILED.upper()}")
    assert response.status_code == 200
    parsed = samples(response.text)
    assert {dict(labels)["job_id"] for _, labels in parsed} == {FAILED}
    assert value(parsed, "cerby_job_can_retry", job_id=FAILED, workflow_type="revoke_access",
                 provider="twitter") == 0  # fmt: skip
    assert "cerby_up" not in response.text
    assert simulator.workspace.stats()["requests"] == calls  # served from the cache


def test_probe_of_an_untracked_job_fetches_it(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    running = exporter_factory(**settings_for(simulator, job_ids=()))
    response = running.get(f"/probe?target={RUNNING}")
    parsed = samples(response.text)
    assert value(parsed, "cerby_job_status", job_id=RUNNING, workflow_type="setup_mfa",
                 provider="twitter", status="running") == 1  # fmt: skip
    assert simulator.workspace.stats()["by_job"][RUNNING] == 1


@pytest.mark.parametrize(
    "query",
    ["", "?target=", "?target=nope", "?target=../../jobs", f"?target={FAILED}&target={RUNNING}"],
)
def test_probe_refuses_anything_but_one_job_id(
    simulator: Simulator, exporter_factory: Factory, query: str
) -> None:
    running = exporter_factory(**settings_for(simulator, job_ids=()))
    wait_ready(running)
    before = simulator.workspace.stats()["requests"]
    response = running.get("/probe" + query)
    assert response.status_code == 400
    assert "target must be one job ID" in response.text
    assert simulator.workspace.stats()["requests"] == before


def test_landing_page_lists_jobs(simulator: Simulator, exporter_factory: Factory) -> None:
    simulator.workspace.set_job(RUNNING, {"status": "paused"})
    running = exporter_factory(**settings_for(simulator))
    wait_ready(running)
    page = running.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    for job_id in (FINISHED, RUNNING, FAILED, MISSING):
        assert f"<td>{job_id}</td>" in html
    assert "<td>unknown (paused)</td>" in html
    assert "<td>revoke_access</td>" in html
    assert "<td>login_failed</td>" in html
    assert "<td>error: ACCESS NOT REMOVED</td>" in html
    assert "<td>Brand One</td>" in html
    assert "fetch failed: not_found" in html
    assert '<meta http-equiv="refresh"' in html
    assert "1 failed access removals</b> · 1 failed · 1 failed and needing a person" in html
    for link in ('href="/metrics"', 'href="/probe?target=', 'href="/healthz"'):
        assert link in html
    assert "Dana Example" not in html
    log = running.log.getvalue()
    assert log.count("status Cerby does not document") == 1


def test_health_ready_and_unknown_paths(simulator: Simulator, exporter_factory: Factory) -> None:
    running = exporter_factory(**settings_for(simulator))
    assert running.get("/healthz").text == "ok\n"
    wait_ready(running)
    assert running.get("/readyz").text == "ready\n"
    for path in ("/metricz", "/metrics/", "/favicon.ico", "/api/v1/jobs"):
        assert running.get(path).status_code == 404
    head = httpx.head(running.url + "/metrics", timeout=10)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 1000
    assert httpx.post(running.url + "/metrics", timeout=10).status_code == 405


def test_ready_even_when_cerby_is_unreachable(exporter_factory: Factory) -> None:
    running = exporter_factory(
        api_url="http://127.0.0.1:9/api/v1", api_key=API_KEY, job_ids=(FINISHED,)
    )
    wait_ready(running)
    parsed = samples(running.get("/metrics").text)
    assert value(parsed, "cerby_up") == 0
    # The warm-up's failure is remembered for the TTL: the scrape does not hammer a dead host.
    assert value(parsed, "cerby_job_fetch_errors_total", reason="transport") == 1


def test_up_with_no_jobs_checks_the_key(simulator: Simulator, exporter_factory: Factory) -> None:
    good = exporter_factory(**settings_for(simulator, job_ids=()))
    assert value(samples(good.get("/metrics").text), "cerby_up") == 1
    bad = exporter_factory(**settings_for(simulator, job_ids=(), api_key="wrong-key-0000"))
    assert value(samples(bad.get("/metrics").text), "cerby_up") == 0


def test_openmetrics_and_gzip_by_negotiation(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    running = exporter_factory(**settings_for(simulator))
    plain = running.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    om = running.get(
        "/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
    )
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    families = {family.name: family for family in openmetrics_families(om.text)}
    assert families["cerby_api_requests"].type == "counter"
    assert families["cerby_job_status"].type == "gauge"
    raw = httpx.get(
        running.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=10
    )  # httpx decodes; check the wire through the raw stream
    assert raw.headers["content-encoding"] == "gzip"
    with httpx.stream(
        "GET", running.url + "/metrics", headers={"Accept-Encoding": "gzip"}, timeout=10
    ) as stream:
        wire = b"".join(stream.iter_raw())
    assert gzip.decompress(wire).startswith(b"# HELP cerby_job_status")


def configured(parsed: Samples) -> float | None:
    return value(parsed, "cerby_tracked_jobs", source="configured")


def scrape_until(
    running: Running, condition: Callable[[Samples], bool], seconds: float = 5.0
) -> Samples:
    """Scrape until `condition` holds: the job-ID file is looked at once a second."""
    deadline = time.monotonic() + seconds
    while True:
        parsed = samples(running.get("/metrics").text)
        if condition(parsed) or time.monotonic() > deadline:
            assert condition(parsed)
            return parsed
        time.sleep(0.2)


def test_job_id_file_edited_while_running(
    simulator: Simulator, exporter_factory: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "job-ids.txt"
    path.write_text(f"# watched jobs\n{FINISHED}\n")
    running = exporter_factory(**settings_for(simulator, job_ids=(), job_ids_file=path))
    parsed = samples(running.get("/metrics").text)
    assert value(parsed, "cerby_tracked_jobs", source="configured") == 1
    path.write_text(f"{FINISHED}\n{FAILED}\nthis line is wrong\n{RUNNING}\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    parsed = scrape_until(
        running, lambda p: value(p, "cerby_tracked_jobs", source="configured") == 3
    )
    assert value(parsed, "cerby_job_fetch_success", job_id=RUNNING) == 1
    assert "line 3 skipped: not a job ID" in running.log.getvalue()
    path.write_text(f"{RUNNING}\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    parsed = scrape_until(
        running, lambda p: value(p, "cerby_tracked_jobs", source="configured") == 1
    )
    assert value(parsed, "cerby_job_fetch_success", job_id=FINISHED) is None


def test_key_never_in_responses_or_logs(simulator: Simulator, exporter_factory: Factory) -> None:
    running = exporter_factory(**settings_for(simulator))
    wait_ready(running)
    simulator.workspace.set_faults(Faults(status=401))
    outputs = [
        running.get(path).text
        for path in ("/", "/metrics", f"/probe?target={MISSING}", "/healthz", "/readyz", "/x")
    ]
    outputs.append(running.log.getvalue())
    assert running.log.getvalue()  # debug logging was on and wrote something
    for text in outputs:
        assert API_KEY not in text


def test_output_passes_promtool(simulator: Simulator, exporter_factory: Factory) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is installed by `make tools`"
    simulator.workspace.set_job(FINISHED, {"account": {"name": 'Quote " back\\ new\nline ✓'}})
    running = exporter_factory(**settings_for(simulator))
    body = running.get("/metrics").content
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    assert result.stdout == b""
    assert result.stderr == b""
    assert r'account_name="Quote \" back\\ new\nline ✓"' in body.decode()


def test_nothing_calls_the_api_before_the_server_starts(simulator: Simulator) -> None:
    from cerby_exporter import logs
    from cerby_exporter.app import EXPORTER, create_app
    from cerby_exporter.settings import Settings

    app = create_app(Settings(**settings_for(simulator)), logs.Redactor())
    time.sleep(0.2)
    assert simulator.workspace.stats()["requests"] == 0
    assert not app[EXPORTER].collector.ready.is_set()


def test_a_failure_that_goes_on_is_logged_when_it_starts_changes_and_ends(
    simulator: Simulator, exporter_factory: Factory
) -> None:
    missing = tuple(f"99999999-0000-0000-0000-{n:012d}" for n in range(200))
    running = exporter_factory(**settings_for(simulator, job_ids=missing, cache_ttl=0.5))
    wait_ready(running)
    for _ in range(3):
        time.sleep(0.6)
        running.get("/metrics")
    parsed = samples(running.get("/metrics").text)
    errors = value(parsed, "cerby_job_fetch_errors_total", reason="not_found")
    assert errors is not None
    assert errors >= 400  # every round fetched them all again
    lines = [line for line in running.log.getvalue().splitlines() if "job fetches" in line]
    assert len(lines) == 1, lines
    assert "level=warning" in lines[0]
    assert "job fetches failing: not_found=200" in lines[0]
    simulator.workspace.set_faults(Faults(status=503))
    time.sleep(0.6)
    running.get("/metrics")
    for job_id in missing[:100]:
        simulator.workspace.set_job(job_id, job_attributes())
    simulator.workspace.set_faults(Faults())
    time.sleep(0.6)
    running.get("/metrics")
    for job_id in missing[100:]:
        simulator.workspace.set_job(job_id, job_attributes())
    time.sleep(0.6)
    running.get("/metrics")
    lines = [line for line in running.log.getvalue().splitlines() if "job fetches" in line]
    assert "job fetches failing: server_error=200" in lines[1]
    assert "job fetches no longer failing" in lines[-1]
    assert len(lines) <= 4, lines
