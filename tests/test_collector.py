"""Rendering of the metric contract, line by line, the pure helpers behind it, and the
collector's scrapes, probes and warm-up against the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cerby_exporter import __version__
from cerby_exporter import collector as collector_module
from cerby_exporter.app import EXPORTER, create_app
from cerby_exporter.cache import Entry, TTLPolicy
from cerby_exporter.client import NIL_JOB_ID
from cerby_exporter.collector import (
    FAMILY_LINES,
    JOB_FAMILIES,
    RENDER_CHUNK,
    Collector,
    JobPart,
    View,
    count_jobs,
    job_text,
    scrape_budget,
    shown_until,
)
from cerby_exporter.exposition import (
    EMPTY_PREFIX,
    escape_label_value,
    format_value,
    gzip_pieces,
    inflate,
    sample,
)
from cerby_exporter.logs import Redactor
from cerby_exporter.model import ErrorDetails, Job
from cerby_exporter.settings import Settings
from cerby_exporter.simulator import Simulator
from tests.support import (
    FAILED,
    FINISHED,
    MISSING,
    RUNNING,
    job_ids_with,
    parse_samples,
    settings_for,
    value,
)

ID = "aaaaaaaa-0000-0000-0000-000000000001"
VIEW = View(60, 3600, 900, sparse_status=False, creator_labels=False)


def job(**changes: object) -> Job:
    values: dict[str, object] = {
        "id": ID,
        "raw_status": "error",
        "workflow_type": "revoke_access",
        "trigger": "user_deprovisioned",
        "provider": "discord_tenant",
        "account_id": "acc-1",
        "account_name": "Community",
        "creator_id": "user-1",
        "creator_name": "Dana Example",
        "can_retry": False,
        "created_at": 1700000000.0,
        "updated_at": 1700000090.5,
        "error": ErrorDetails("login_failed", True, "https://example.invalid/s.png"),
        "has_more_details": True,
    }
    values.update(changes)
    return Job(**values)  # type: ignore[arg-type]


def lines(entry: Entry | None, view: View = VIEW, visible: bool = True) -> dict[str, str]:
    """One job's line in each family; data not shown is rendered as no entry, as a scrape does."""
    shown = entry if visible else None
    return {
        name: family(ID, shown, view)
        for name, family in zip(JOB_FAMILIES, FAMILY_LINES, strict=True)
    }


def test_a_failed_job_renders_every_family() -> None:
    out = lines(Entry(job(), 1700000100.25, None))
    kind = f'job_id="{ID}",workflow_type="revoke_access",provider="discord_tenant"'
    assert out["cerby_job_status"].splitlines() == [
        f'cerby_job_status{{{kind},status="{s}"}} {int(s == "error")}'
        for s in ("created", "started", "running", "retrying", "finished", "error", "unknown")
    ]
    assert out["cerby_job_can_retry"] == f"cerby_job_can_retry{{{kind}}} 0\n"
    assert out["cerby_job_info"] == (
        f'cerby_job_info{{{kind},trigger="user_deprovisioned",account_id="acc-1",'
        'account_name="Community"} 1\n'
    )
    assert out["cerby_job_created_timestamp_seconds"] == (
        f'cerby_job_created_timestamp_seconds{{job_id="{ID}"}} 1700000000.0\n'
    )
    assert out["cerby_job_updated_timestamp_seconds"].endswith(" 1700000090.5\n")
    assert out["cerby_job_error_info"] == (
        f'cerby_job_error_info{{job_id="{ID}",error_type="login_failed",user_required="true"}} 1\n'
    )
    assert out["cerby_job_fetch_success"] == f'cerby_job_fetch_success{{job_id="{ID}"}} 1\n'
    assert out["cerby_job_last_fetch_timestamp_seconds"].endswith(" 1700000100.25\n")


def test_no_personal_data_by_default_and_creator_on_request() -> None:
    entry = Entry(job(), 1.0, None)
    everything = "".join(lines(entry).values())
    assert "Dana Example" not in everything
    assert "user-1" not in everything
    opted = lines(entry, View(60, 3600, 900, sparse_status=False, creator_labels=True))
    assert 'creator_id="user-1",creator_name="Dana Example"' in opted["cerby_job_info"]


def test_sparse_status_has_only_the_current_series() -> None:
    out = lines(Entry(job(raw_status="running"), 1.0, None), View(60, 3600, 900, True, False))
    assert out["cerby_job_status"].count("\n") == 1
    assert 'status="running"} 1' in out["cerby_job_status"]


def test_nulls_become_empty_labels_and_absent_series() -> None:
    bare = job(
        raw_status=None, workflow_type=None, provider=None, trigger=None, account_id=None,
        account_name=None, can_retry=None, created_at=None, updated_at=None, error=None,
    )  # fmt: skip
    out = lines(Entry(bare, 5.0, None))
    assert (
        f'{{job_id="{ID}",workflow_type="",provider="",status="unknown"}} 1'
        in out["cerby_job_status"]
    )
    assert out["cerby_job_can_retry"] == ""
    assert out["cerby_job_created_timestamp_seconds"] == ""
    assert out["cerby_job_updated_timestamp_seconds"] == ""
    assert out["cerby_job_error_info"] == ""
    assert 'trigger="",account_id="",account_name=""' in out["cerby_job_info"]


def test_error_info_only_for_jobs_in_error() -> None:
    assert lines(Entry(job(raw_status="finished"), 1.0, None))["cerby_job_error_info"] == ""
    unknown_need = job(error=ErrorDetails("x", None, None))
    assert 'user_required=""' in lines(Entry(unknown_need, 1.0, None))["cerby_job_error_info"]


def test_a_failed_refresh_shows_last_data_with_fetch_success_zero() -> None:
    out = lines(Entry(job(), 1700000100.0, "server_error"))
    assert out["cerby_job_fetch_success"].endswith(" 0\n")
    assert out["cerby_job_last_fetch_timestamp_seconds"].endswith(" 1700000100.0\n")
    assert 'status="error"} 1' in out["cerby_job_status"]


@pytest.mark.parametrize(
    ("entry", "visible"),
    [(None, True), (Entry(None, None, "not_found"), True), (Entry(job(), 1.0, None), False)],
)
def test_no_data_or_stale_data_keeps_only_fetch_success_zero(
    entry: Entry | None, visible: bool
) -> None:
    out = lines(entry, visible=visible)
    assert out["cerby_job_fetch_success"] == f'cerby_job_fetch_success{{job_id="{ID}"}} 0\n'
    assert all(text == "" for name, text in out.items() if name != "cerby_job_fetch_success")


def test_shown_until_counts_staleness_past_the_refresh_time() -> None:
    policy = TTLPolicy(60, 3600)
    assert shown_until(Entry(job(raw_status="running"), 1000.0, None), policy, 900) == 1960.0
    assert shown_until(Entry(job(raw_status="finished"), 1000.0, "timeout"), policy, 900) == 5500.0
    assert shown_until(Entry(None, None, "not_found"), policy, 900) == -float("inf")


def test_count_jobs_is_dense_over_seen_kinds() -> None:
    counts = count_jobs([job(), job(raw_status="finished"), job(provider="x", raw_status="what")])
    assert counts[("revoke_access", "discord_tenant", "error")] == 1
    assert counts[("revoke_access", "discord_tenant", "finished")] == 1
    assert counts[("revoke_access", "discord_tenant", "running")] == 0
    assert counts[("revoke_access", "x", "unknown")] == 1
    assert len(counts) == 14


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 9.5),
        ("10", 9.5),
        ("4.5", 4.0),
        ("0.5", 0.25),
        ("garbage", 9.5),
        ("0", 9.5),
        ("-3", 9.5),
        ("inf", 9.5),
        ("nan", 9.5),
    ],
)
def test_scrape_budget(header: str | None, expected: float) -> None:
    assert scrape_budget(header, default=10, offset=0.5) == expected


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ('say "hi"', r"say \"hi\""),
        ("back\\slash", r"back\\slash"),
        ("two\nlines", r"two\nlines"),
        ("Café ✓", "Café ✓"),
    ],
)
def test_label_escaping(raw: str, escaped: str) -> None:
    assert escape_label_value(raw) == escaped


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1, "1"),
        (True, "1"),
        (2.5, "2.5"),
        (1.7e9, "1700000000.0"),
        (float("inf"), "+Inf"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_sample_without_labels() -> None:
    assert sample("cerby_up", (), 1) == "cerby_up 1\n"


def test_a_job_part_serves_only_its_ids_and_version_until_it_turns_stale() -> None:
    ids = (ID,)
    part = JobPart(ids, version=3, valid_until=100.0, gzip=EMPTY_PREFIX, stale=0)
    assert part.serves(ids, 3, now=100.0)
    assert part.serves((ID,), 2, now=50.0)  # an older round's entries render the same
    assert not part.serves(ids, 4, now=50.0)  # new data stored since
    assert not part.serves((ID, "other"), 3, now=50.0)
    assert not part.serves(ids, 3, now=100.001)  # a shown job's data turned too old
    assert not part.serves(ids, -1, now=50.0)  # entries read outside any round


def collect(values: dict[str, Any], scenario: Callable[[Collector], Awaitable[None]]) -> None:
    """Run `scenario` on the collector an app built from `values`, on one event loop, without
    serving it: the app's cleanup closes what the collector opened."""

    async def main() -> None:
        app = create_app(Settings(**values), Redactor())
        try:
            await scenario(app[EXPORTER].collector)
        finally:
            await app[EXPORTER].close(app)

    asyncio.run(main())


def test_ready_once_the_first_collection_was_attempted_whatever_its_outcome(
    isolated_env: Path,
) -> None:
    unreachable = {"api_url": "http://127.0.0.1:9/api/v1", "api_key": "k" * 16, "retries": 0}

    async def scenario(collector: Collector) -> None:
        assert not collector.ready.is_set()
        await collector.warm_up()
        assert collector.ready.is_set()
        jobs, rest = await collector.scrape_parts(None, openmetrics=False)
        samples = parse_samples((await jobs.plain() + rest).decode())
        assert value(samples, "cerby_up") == 0
        assert value(samples, "cerby_job_fetch_success", job_id=FINISHED) == 0
        assert job_ids_with(samples, "cerby_job_info") == set()

    collect({**unreachable, "job_ids": (FINISHED,)}, scenario)


def test_a_scrape_is_the_job_part_then_health_and_self_metrics(
    simulator: Simulator, isolated_env: Path
) -> None:
    async def scenario(collector: Collector) -> None:
        jobs, rest = await collector.scrape_parts("5", openmetrics=False)
        body = (await jobs.plain()).decode()
        assert job_ids_with(parse_samples(body), "cerby_job_info") == {FINISHED, RUNNING, FAILED}
        assert "cerby_up" not in body
        assert jobs.stale == 0
        health = parse_samples(rest.decode())
        assert value(health, "cerby_up") == 1
        assert value(health, "cerby_tracked_jobs", source="configured") == 4
        assert value(health, "cerby_tracked_jobs", source="webhook") == 0
        assert value(health, "cerby_stale_jobs") == 0
        assert value(health, "cerby_api_backoff_until_timestamp_seconds") == 0
        assert value(health, "cerby_exporter_build_info", version=__version__) == 1
        assert value(health, "cerby_api_requests_total", code="404") == 1
        assert not {name for name, _ in health} & {*JOB_FAMILIES, "cerby_jobs"}
        assert not rest.endswith(b"# EOF\n")
        again, openmetrics_rest = await collector.scrape_parts(None, openmetrics=True)
        assert again is jobs
        assert openmetrics_rest.endswith(b"# EOF\n")

    collect(settings_for(simulator), scenario)
    assert simulator.workspace.stats()["by_job"] == dict.fromkeys(
        (FINISHED, RUNNING, FAILED, MISSING), 1
    )


UNTRACKED = "55555555-6666-7777-8888-999999999999"


def test_a_probe_shares_the_cache_and_shows_one_job(
    simulator: Simulator, isolated_env: Path
) -> None:
    async def scenario(collector: Collector) -> None:
        await collector.scrape_parts(None, openmetrics=False)
        tracked = await collector.probe(FAILED, None, openmetrics=False)
        samples = parse_samples(tracked.decode())
        assert {name for name, _ in samples} <= set(JOB_FAMILIES)
        assert job_ids_with(samples, "cerby_job_error_info") == {FAILED}
        assert {dict(labels)["job_id"] for _, labels in samples} == {FAILED}
        untracked = "55555555-6666-7777-8888-999999999999"
        probed = await collector.probe(untracked, None, openmetrics=True)
        assert probed.endswith(b"# EOF\n")
        assert (
            value(parse_samples(probed.decode()), "cerby_job_fetch_success", job_id=untracked) == 0
        )
        await collector.probe(untracked, None, openmetrics=False)

    collect(settings_for(simulator, job_ids=(FAILED,)), scenario)
    # The tracked job came from the cache; the unknown one was asked for once, then cached.
    by_job = simulator.workspace.stats()["by_job"]
    assert by_job == {FAILED: 1, UNTRACKED: 1}


@pytest.mark.parametrize(("key", "up"), [(None, 1), ("wrong-key-0000", 0)])
def test_with_no_jobs_a_key_check_keeps_cerby_up_honest(
    simulator: Simulator, isolated_env: Path, key: str | None, up: int
) -> None:
    values = settings_for(simulator, job_ids=())
    if key is not None:
        values["api_key"] = key

    async def scenario(collector: Collector) -> None:
        await collector.warm_up()
        _, rest = await collector.scrape_parts(None, openmetrics=False)
        assert value(parse_samples(rest.decode()), "cerby_up") == up

    collect(values, scenario)
    assert simulator.workspace.stats()["by_job"] == {NIL_JOB_ID: 1}  # once, not per scrape


@pytest.mark.parametrize("jobs", [0, 1, RENDER_CHUNK, RENDER_CHUNK + 1, 3 * RENDER_CHUNK + 7])
def test_the_job_text_in_pieces_is_every_family_once_with_every_job(jobs: int) -> None:
    view = View(60, 3600, 300, sparse_status=True, creator_labels=False)
    running = job(raw_status="running", workflow_type="password_rotation", provider="x")
    rows = [
        (f"{n:08d}-0000-0000-0000-000000000000", Entry(running, 1.7e9, None)) for n in range(jobs)
    ]
    pieces = list(job_text(rows, view, view.help_texts(), aggregate=True))
    text = "".join(pieces)
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert families == [*JOB_FAMILIES, "cerby_jobs"]
    samples = parse_samples(text)
    assert len(job_ids_with(samples, "cerby_job_info")) == jobs
    assert sum(1 for name, _ in samples if name == "cerby_job_status") == jobs
    if jobs:
        assert (
            value(
                samples,
                "cerby_jobs",
                workflow_type="password_rotation",
                provider="x",
                status="running",
            )
            == jobs
        )
    assert inflate(gzip_pieces(piece.encode() for piece in pieces)) == text.encode()


def test_the_job_part_is_made_a_piece_at_a_time_letting_the_loop_run_between_pieces(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector_module, "RENDER_TURN", 0.0)  # a turn of one piece
    jobs = 3 * RENDER_CHUNK
    running = job(raw_status="running", workflow_type="password_rotation", provider="x")
    rows = [
        (f"{n:08d}-0000-0000-0000-000000000000", Entry(running, 1.7e9, None)) for n in range(jobs)
    ]
    view = View(60, 3600, 300, sparse_status=False, creator_labels=False)
    pieces = len(list(job_text(rows, view, view.help_texts(), aggregate=True)))
    unreachable = {"api_url": "http://127.0.0.1:9/api/v1", "api_key": "k" * 16, "retries": 0}

    async def scenario(collector: Collector) -> None:
        turns = 0
        done = False

        def tick() -> None:
            nonlocal turns
            turns += 1
            if not done:
                asyncio.get_running_loop().call_soon(tick)

        ids = tuple(job_id for job_id, _ in rows)
        asyncio.get_running_loop().call_soon(tick)
        part = await collector._make_part(ids, 1, rows, 0, float("inf"))
        done = True
        assert turns >= pieces - 1  # the loop ran between every two pieces
        samples = parse_samples(inflate(part.gzip).decode())
        assert len(job_ids_with(samples, "cerby_job_info")) == jobs

    collect({**unreachable, "job_ids": (FINISHED,)}, scenario)
