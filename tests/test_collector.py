"""Rendering of the metric contract, line by line, and the pure helpers behind it."""

from __future__ import annotations

import pytest

from cerby_exporter.cache import Entry, TTLPolicy
from cerby_exporter.collector import (
    JOB_FAMILIES,
    View,
    count_jobs,
    render_job,
    scrape_budget,
    shown_until,
)
from cerby_exporter.exposition import escape_label_value, format_value, sample
from cerby_exporter.model import ErrorDetails, Job

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
    return dict(zip(JOB_FAMILIES, render_job(ID, entry, visible, view), strict=True))


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
