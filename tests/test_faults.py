"""Fault injection against the simulator: whatever Cerby does, /metrics answers 200 within the
scrape deadline, good data within the staleness limit is kept (with its true fetch time), and
`cerby_job_fetch_errors_total` counts exactly the faults the simulator says it injected.

Every exporter here runs in-process on a real socket, against the simulator over real HTTP, with
short TTLs and a 0.5 s request timeout so that each test takes a second or two.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from cerby_exporter.client import ApiKey
from cerby_exporter.metrics import FETCH_ERROR_REASONS
from cerby_exporter.simulator import Faults, Simulator
from tests.support import (
    API_KEY,
    FAILED,
    FINISHED,
    RUNNING,
    Running,
    Samples,
    job_ids_with,
    parse_samples,
    settings_for,
    value,
)

JOBS = (FINISHED, RUNNING, FAILED)
DEADLINE = 2.0
"""Seconds Prometheus gives each scrape here (sent as X-Prometheus-Scrape-Timeout-Seconds)."""

REASON_OF = {
    "status_400": "invalid_response",
    "status_401": "unauthorized",
    "status_403": "unauthorized",
    "status_404": "not_found",
    "status_429": "rate_limited",  # tested on its own below: it closes the gate for everyone
    "status_500": "server_error",
    "status_502": "server_error",
    "status_503": "server_error",
    "status_504": "server_error",
    "malformed": "invalid_response",
    "truncated": "transport",  # the connection closed before the promised body was complete
    "oversize": "invalid_response",
    "content_type": "invalid_response",
    "hang": "timeout",
    "reset": "transport",  # met once or twice per fetch: see RESENT
    "nulls": None,  # a valid envelope: the job is shown with empty labels, status unknown
    "unknown_fields": None,  # ignored fields, and an undocumented status shown as unknown
}
"""The reason a fetch that met each fault is counted under; None: not a failure."""

RESENT = "reset"
"""aiohttp's client resends a GET once, on a new connection, when a kept-alive one breaks before
an answer (RFC 9112, section 9.3.1): a fetch that failed on resets met one or two of them."""

Factory = Callable[..., Running]


def faults(kind: str, **extra: Any) -> Faults:
    if kind.startswith("status_"):
        return Faults(status=int(kind.removeprefix("status_")), **extra)
    return Faults(fault=kind, **extra)


def start(factory: Factory, sim: Simulator, **values: Any) -> Running:
    settings: dict[str, Any] = {
        "job_ids": JOBS,
        "cache_ttl": 0.1,
        "terminal_cache_ttl": 0.1,
        "request_timeout": 0.5,
        "retries": 0,
        **values,
    }
    running = factory(**settings_for(sim, **settings))
    deadline = time.monotonic() + 10
    while running.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "exporter never became ready"
        time.sleep(0.02)
    return running


def scrape(running: Running, deadline: float = DEADLINE) -> Samples:
    """One scrape as Prometheus makes it; it must be a 200 within the deadline."""
    started = time.monotonic()
    answer = httpx.get(
        running.url + "/metrics",
        headers={"X-Prometheus-Scrape-Timeout-Seconds": str(deadline)},
        timeout=deadline + 5,
    )
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    assert elapsed < deadline, f"scrape took {elapsed:.2f}s, over the {deadline}s deadline"
    return parse_samples(answer.text)


def errors(samples: Samples) -> dict[str, float]:
    return {
        reason: value(samples, "cerby_job_fetch_errors_total", reason=reason) or 0.0
        for reason in FETCH_ERROR_REASONS
    }


def injected(sim: Simulator) -> dict[str, int]:
    counts = sim.workspace.stats()["injected"]
    assert isinstance(counts, dict)
    return counts


def expected_errors(counts: dict[str, int], base: dict[str, float]) -> dict[str, float]:
    expected = dict(base)
    for kind, count in counts.items():
        reason = REASON_OF[kind]
        if reason is not None and kind != RESENT:
            expected[reason] += count
    return expected


def assert_counted(found: dict[str, float], counts: dict[str, int], base: dict[str, float]) -> None:
    """Every injected fault is counted once under its reason; a fetch failed by resets, once."""
    expected = expected_errors(counts, base)
    resets = counts.get(RESENT, 0)
    failed_by_resets = found["transport"] - expected["transport"]
    assert failed_by_resets <= resets <= 2 * failed_by_resets
    assert {**found, "transport": 0} == {**expected, "transport": 0}


def info_labels(samples: Samples) -> dict[str, dict[str, str]]:
    return {
        dict(labels)["job_id"]: dict(labels)
        for (name, labels) in samples
        if name == "cerby_job_info"
    }


@pytest.mark.parametrize("kind", sorted(set(REASON_OF) - {"status_429"}))
def test_each_fault_lands_under_its_reason_and_data_survives(
    kind: str, simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    running = start(exporter_factory, simulator)
    good = scrape(running)
    assert {value(good, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
    good_info = info_labels(good)
    assert set(good_info) == set(JOBS)
    fetched = {j: value(good, "cerby_job_last_fetch_timestamp_seconds", job_id=j) for j in JOBS}
    base = errors(good)

    simulator.workspace.set_faults(faults(kind))
    for _ in range(3):
        time.sleep(0.15)  # every job's cache entry has expired: each scrape fetches all three
        during = scrape(running)
        assert running.get("/readyz").status_code == 200

    counts = injected(simulator)
    assert counts.get(kind, 0) >= len(JOBS)
    assert set(counts) == {kind}
    assert_counted(errors(during), counts, base)
    reason = REASON_OF[kind]
    if reason is None:  # accepted as data: shown, fresh, with what Cerby said
        assert {value(during, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
        for job_id in JOBS:
            unknown = {**good_status(good_info, job_id), "status": "unknown"}
            if kind == "nulls":  # every label Cerby left null is empty
                unknown.update(workflow_type="", provider="")
            assert value(during, "cerby_job_status", **unknown) == 1
            assert value(during, "cerby_job_status", **{**unknown, "status": "created"}) == 0
    else:  # the last good data stays, marked failed, with its true fetch time
        assert {value(during, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {0.0}
        assert info_labels(during) == good_info
        for job_id in JOBS:
            last = value(during, "cerby_job_last_fetch_timestamp_seconds", job_id=job_id)
            assert last == fetched[job_id]
        assert value(during, "cerby_stale_jobs") == 0
    # Up means the round reached Cerby and it took the key: not so when nothing answered or
    # every answer was a 5xx or a refusal.
    down = reason in ("unauthorized", "server_error", "timeout", "transport")
    assert value(during, "cerby_up") == (0 if down else 1)

    simulator.workspace.set_faults(Faults())
    time.sleep(0.15)
    after = scrape(running)
    assert {value(after, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
    assert info_labels(after) == good_info
    for job_id in JOBS:
        last = value(after, "cerby_job_last_fetch_timestamp_seconds", job_id=job_id)
        before = fetched[job_id]
        assert last is not None
        assert before is not None
        assert last > before
    assert value(after, "cerby_up") == 1


def good_status(info: dict[str, dict[str, str]], job_id: str) -> dict[str, str]:
    """Labels of the job's `cerby_job_status` series for status `created`."""
    labels = info[job_id]
    return {
        "job_id": job_id,
        "workflow_type": labels["workflow_type"],
        "provider": labels["provider"],
        "status": "created",
    }


def test_random_mixed_faults_are_counted_exactly(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    """Half the requests fail, with one fault after another (429 bursts included): every scrape
    still answers in time, and every reason's counter equals what was injected."""
    running = start(exporter_factory, simulator, max_staleness=60)
    good = scrape(running)
    good_info = info_labels(good)
    base = errors(good)
    base_codes = responses(good)
    phases = [
        Faults(status=500, rate=0.5),
        Faults(fault="reset", rate=1.0),  # at 0.5, a resent GET could succeed uncounted
        Faults(status=503, rate=0.5),
        Faults(fault="malformed", rate=0.5),
        Faults(status=429, rate=0.5, retry_after="1"),
        Faults(fault="truncated", rate=0.5),
        Faults(fault="hang", rate=0.5),
        Faults(fault="content_type", rate=0.5),
        Faults(status=502, rate=0.5),
        Faults(fault="oversize", rate=0.5),
        Faults(status=429, rate=1.0, retry_after="1", count=2),
        Faults(fault="nulls", rate=0.3),
    ]
    for phase in phases:
        simulator.workspace.set_faults(phase)
        for _ in range(2):
            time.sleep(0.15)
            samples = scrape(running)
            # Good data is never lost: every job keeps its series (within --max-staleness).
            assert job_ids_with(samples, "cerby_job_info") == set(JOBS)
        if phase.status == 429:  # let the one-second back-off run out before the next phase
            time.sleep(1.1)
    simulator.workspace.set_faults(Faults())
    time.sleep(0.15)
    final = scrape(running)
    counts = injected(simulator)
    assert sum(counts.values()) >= 20
    assert_counted(errors(final), counts, base)
    for code in (429, 500, 502, 503):
        assert responses(final).get(str(code), 0) - base_codes.get(str(code), 0) == counts.get(
            f"status_{code}", 0
        )
    assert {value(final, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
    assert info_labels(final) == good_info


def responses(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["code"]: v
        for (name, labels), v in samples.items()
        if name == "cerby_api_requests_total"
    }


def test_transient_failures_are_retried_other_4xx_never(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    running = start(exporter_factory, simulator, retries=2)
    base = scrape(running)
    by_job = simulator.workspace.by_job

    # One 500, then Cerby recovers: the retry hides it from the job, not from the request count.
    simulator.workspace.set_faults(Faults(status=500, count=1))
    before = dict(by_job)
    time.sleep(0.15)
    samples = scrape(running)
    assert {value(samples, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
    assert sum(by_job[j] - before.get(j, 0) for j in JOBS) == len(JOBS) + 1
    assert errors(samples)["server_error"] == errors(base)["server_error"]
    assert responses(samples)["500"] == 1

    # Cerby keeps failing: three tries a job (one and two retries), then one counted failure.
    simulator.workspace.set_faults(Faults(status=503))
    before = dict(by_job)
    time.sleep(0.15)
    samples = scrape(running)
    assert {by_job[j] - before.get(j, 0) for j in JOBS} == {3}
    assert errors(samples)["server_error"] == errors(base)["server_error"] + len(JOBS)

    # A 400 is not transient: no retry.
    simulator.workspace.set_faults(Faults(status=400))
    before = dict(by_job)
    time.sleep(0.15)
    samples = scrape(running)
    assert {by_job[j] - before.get(j, 0) for j in JOBS} == {1}
    assert errors(samples)["invalid_response"] == errors(base)["invalid_response"] + len(JOBS)


def test_retries_stay_inside_the_scrape_deadline(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    """Five retries allowed, but after one 0.5 s timeout no retry fits in a 1.2 s scrape."""
    running = start(exporter_factory, simulator, retries=5)
    scrape(running, deadline=1.2)
    simulator.workspace.set_faults(Faults(fault="hang"))
    before = dict(simulator.workspace.by_job)
    time.sleep(0.15)
    samples = scrape(running, deadline=1.2)
    assert {simulator.workspace.by_job[j] - before.get(j, 0) for j in JOBS} == {1}
    assert {value(samples, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {0.0}


def test_cerby_hanging_past_the_deadline_serves_cached_data_in_time(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    """A fetch that outlives the scrape goes on in the background; the scrape answers with the
    data it has, and a second scrape joins the same fetch instead of sending another."""
    running = start(exporter_factory, simulator, request_timeout=1.5)
    good = scrape(running, deadline=0.8)
    simulator.workspace.set_faults(Faults(fault="hang"))
    time.sleep(0.15)
    first = scrape(running, deadline=0.8)
    second = scrape(running, deadline=0.8)
    assert injected(simulator) == {"hang": len(JOBS)}  # single flight: no second request
    for samples in (first, second):
        assert info_labels(samples) == info_labels(good)
        assert {value(samples, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
    simulator.workspace.set_faults(Faults())
    time.sleep(1.6)  # the hung requests time out and are counted
    samples = scrape(running)
    assert errors(samples)["timeout"] == len(JOBS)


def test_data_older_than_max_staleness_is_withdrawn_not_passed_off(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    running = start(exporter_factory, simulator, max_staleness=0.6)
    good = scrape(running)
    fetched = {j: value(good, "cerby_job_last_fetch_timestamp_seconds", job_id=j) for j in JOBS}
    simulator.workspace.set_faults(Faults(status=500))
    time.sleep(0.15)
    young = scrape(running)  # due since 0.05 s, failing: still shown, with its real age
    assert job_ids_with(young, "cerby_job_info") == set(JOBS)
    for job_id in JOBS:
        last = value(young, "cerby_job_last_fetch_timestamp_seconds", job_id=job_id)
        assert last == fetched[job_id]
    assert value(young, "cerby_stale_jobs") == 0

    oldest = max(v for v in fetched.values() if v is not None)
    time.sleep(max(0.0, oldest + 0.1 + 0.6 + 0.2 - time.time()))
    stale = scrape(running)
    for family in (
        "cerby_job_status",
        "cerby_job_info",
        "cerby_job_last_fetch_timestamp_seconds",
        "cerby_job_created_timestamp_seconds",
    ):
        assert job_ids_with(stale, family) == set(), family
    assert {value(stale, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {0.0}
    assert value(stale, "cerby_stale_jobs") == len(JOBS)
    assert not any(name == "cerby_jobs" and v > 0 for (name, _), v in stale.items())

    simulator.workspace.set_faults(Faults())
    time.sleep(0.15)
    back = scrape(running)
    assert job_ids_with(back, "cerby_job_info") == set(JOBS)
    assert value(back, "cerby_stale_jobs") == 0


def test_staleness_is_counted_from_when_a_refresh_was_due(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    """A finished job is cached for the terminal TTL, which may be longer than --max-staleness:
    its data is withdrawn only when a refresh was due and failing for max-staleness."""
    running = start(
        exporter_factory, simulator, terminal_cache_ttl=2.0, cache_ttl=0.1, max_staleness=1.0
    )
    good = scrape(running)
    fetched = value(good, "cerby_job_last_fetch_timestamp_seconds", job_id=FINISHED)
    assert fetched is not None
    simulator.workspace.set_faults(Faults(status=500))
    time.sleep(max(0.0, fetched + 1.5 - time.time()))
    cached = scrape(running)  # older than max-staleness, but not yet due: shown as fetched
    assert value(cached, "cerby_job_fetch_success", job_id=FINISHED) == 1
    assert job_ids_with(cached, "cerby_job_info") >= {FINISHED, FAILED}
    assert RUNNING not in job_ids_with(cached, "cerby_job_info")  # due at 0.1 s, stale at 1.1 s
    time.sleep(max(0.0, fetched + 2.4 - time.time()))
    failing = scrape(running)  # due at 2 s and failing: shown, marked failed
    assert value(failing, "cerby_job_fetch_success", job_id=FINISHED) == 0
    assert FINISHED in job_ids_with(failing, "cerby_job_info")
    time.sleep(max(0.0, fetched + 3.3 - time.time()))
    gone = scrape(running)  # due and failing for over max-staleness (since 3 s)
    assert job_ids_with(gone, "cerby_job_info") == set()
    assert value(gone, "cerby_stale_jobs") == len(JOBS)


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [("2", 2.0), (None, 300.0), ("http-date", 4.0)],
)
def test_429_one_global_backoff_logged_once(
    retry_after: str | None,
    seconds: float,
    simulator: Simulator,
    exporter_factory: Factory,
    isolated_env: Path,
) -> None:
    running = start(exporter_factory, simulator, rate_limit_backoff=300)
    good = scrape(running)
    assert value(good, "cerby_api_backoff_until_timestamp_seconds") == 0
    header = formatdate(time.time() + seconds, usegmt=True) if retry_after == "http-date" else None
    simulator.workspace.set_faults(Faults(status=429, retry_after=header or retry_after))
    requests_before = simulator.workspace.requests
    time.sleep(0.15)
    tripped = time.time()
    limited = scrape(running)
    until = value(limited, "cerby_api_backoff_until_timestamp_seconds")
    assert until is not None
    assert tripped + seconds - 1.5 <= until <= tripped + seconds + 0.5
    # The jobs were fetched at once: those sent before the first 429 came back got one too,
    # and none was sent after it.
    counts = injected(simulator)
    assert set(counts) == {"status_429"}
    assert 1 <= counts["status_429"] <= len(JOBS)
    assert simulator.workspace.requests - requests_before == counts["status_429"]
    assert errors(limited)["rate_limited"] == counts["status_429"]

    requests = simulator.workspace.requests
    for _ in range(3):  # inside the back-off: no API call, cached data, still ready and up
        time.sleep(0.15)
        inside = scrape(running)
        assert info_labels(inside) == info_labels(good)
        assert value(inside, "cerby_api_backoff_until_timestamp_seconds") == until
        assert value(inside, "cerby_up") == 1
        assert running.get("/readyz").status_code == 200
    assert running.get(f"/probe?target={RUNNING}").status_code == 200
    assert simulator.workspace.requests == requests

    log = running.log.getvalue()
    assert log.count("rate limiting") == 1, log
    assert "rate_limited=" not in "\n".join(
        line for line in log.splitlines() if "level=debug" not in line
    )
    if seconds > 5:
        return
    simulator.workspace.set_faults(Faults())
    time.sleep(max(0.0, until - time.time() + 0.05))
    after = scrape(running)
    assert simulator.workspace.requests > requests
    assert value(after, "cerby_api_backoff_until_timestamp_seconds") == 0
    assert {value(after, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}


def test_rejected_key_then_a_new_key_file_without_restart(
    simulator: Simulator, exporter_factory: Factory, isolated_env: Path
) -> None:
    key_file = isolated_env / "key"
    key_file.write_text(API_KEY + "\n")
    running = start(exporter_factory, simulator, api_key=None, api_key_file=key_file)
    good = scrape(running)
    assert value(good, "cerby_up") == 1

    new_key = "renewed-key-7d1c0b9e44"
    simulator.workspace.api_key = new_key  # the old key expired
    for _ in range(4):
        time.sleep(0.15)
        refused = scrape(running)
        assert value(refused, "cerby_up") == 0
        assert info_labels(refused) == info_labels(good)  # cached data still served
        assert running.get("/readyz").status_code == 200
        assert running.get("/healthz").status_code == 200
    assert errors(refused)["unauthorized"] >= 4 * len(JOBS)
    log = running.log.getvalue()
    assert log.count("Cerby refuses the API key (HTTP 401)") == 1, log
    assert log.count("level=warning") == 0, log

    key_file.write_text(new_key + "\n")
    deadline = time.monotonic() + 5
    while True:
        time.sleep(0.15)
        samples = scrape(running)
        if value(samples, "cerby_up") == 1 or time.monotonic() > deadline:
            break
    assert value(samples, "cerby_up") == 1
    assert {value(samples, "cerby_job_fetch_success", job_id=j) for j in JOBS} == {1.0}
    log = running.log.getvalue()
    assert log.count("API key file changed: new key in use") == 1
    assert log.count("Cerby accepts the API key again") == 1
    assert API_KEY not in log
    assert new_key not in log


def test_a_key_file_is_never_read_as_an_empty_key(tmp_path: Path) -> None:
    """Fetches start together: none may go out before the key file is read, keyless. The
    second `get()` starts while the first is still reading the file in its thread."""
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    reading = threading.Event()

    def slow_redactor(_key: str) -> None:  # runs inside the first read of the file
        reading.set()
        time.sleep(0.2)

    async def two_fetches() -> list[str]:
        key = ApiKey(None, key_file, slow_redactor)
        first = asyncio.create_task(key.get())
        assert await asyncio.to_thread(reading.wait, 5)
        second = await key.get()
        return [await first, second]

    assert asyncio.run(two_fetches()) == [API_KEY, API_KEY]
