"""Job IDs: only the UUID shape passes, files reload on change, bad lines are skipped."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from cerby_exporter.jobids import (
    JobIdSource,
    is_job_id,
    merge,
    parse_job_ids_file,
    split_job_ids,
)

A = "aaaaaaaa-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"
C = "cccccccc-0000-0000-0000-000000000003"


@pytest.mark.parametrize(
    "text",
    [A, "3F0E1B2C-4D5E-6F70-8192-A3B4C5D6E7F8", "00000000-0000-0000-0000-000000000000"],
)
def test_uuid_shapes_pass(text: str) -> None:
    assert is_job_id(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        A + "0",
        A[:-1],
        "{" + A + "}",
        A.replace("-", ""),
        "../../admin/users",
        A + "/../x",
        "gggggggg-0000-0000-0000-000000000001",
        " " + A,
        A + "\n",
        "aaaaaaaa-0000-0000-0000-00000000000\u0661",  # an Arabic-Indic digit is not hex
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    assert not is_job_id(text)


def test_split_on_commas_and_white_space() -> None:
    assert split_job_ids(f"{A}, {B}\n{C},,") == [A, B, C]
    assert split_job_ids("  ") == []


def test_file_with_comments_blank_lines_and_bad_lines() -> None:
    parsed = parse_job_ids_file(f"# jobs to watch\n\n{A}\n{B.upper()}  # rotation\nnope\n  {C}\n")
    assert parsed.ids == (A, B, C)
    assert parsed.bad_lines == ((5, "nope"),)


def test_merge_keeps_first_occurrence_and_order() -> None:
    assert merge([B, A], [A, C, B]) == (B, A, C)


def write(path: Path, text: str | bytes, bump: int) -> None:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    # Some file systems keep mtime to the second: make each edit visibly newer.
    stamp = 1_700_000_000 + bump
    os.utime(path, (stamp, stamp))


def loaded(source: JobIdSource) -> tuple[str, ...]:
    """The tracked IDs after a reload, as the next scrape sees them."""
    asyncio.run(source.reload())
    return source.current()


def test_source_reloads_edited_file_and_skips_bad_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.txt"
    write(path, f"{A}\n", 1)
    source = JobIdSource((C,), path, max_jobs=10, recheck_seconds=0)
    assert source.current() == (C,)  # the file is read by reload(), never at construction
    assert loaded(source) == (C, A)
    assert source.configured() == (C, A)
    write(path, f"{A}\n{B}\nnot-an-id\n", 2)
    with caplog.at_level(logging.WARNING):
        assert loaded(source) == (C, A, B)
    assert "line 3 skipped" in caplog.text
    write(path, f"{B}\n", 3)
    assert loaded(source) == (C, B)  # removing a line stops tracking that job


def test_a_replaced_file_is_noticed(tmp_path: Path) -> None:
    """As an editor saving to a new file and renaming it over the old one does."""
    path = tmp_path / "jobs.txt"
    write(path, f"{A}\n", 1)
    source = JobIdSource((), path, max_jobs=10, recheck_seconds=0)
    assert loaded(source) == (A,)
    replacement = tmp_path / "jobs.txt.new"
    write(replacement, f"{B}\n", 1)  # same size and mtime: only the inode differs
    replacement.replace(path)
    assert loaded(source) == (B,)


def test_the_file_is_looked_at_once_per_recheck_period(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    write(path, f"{A}\n", 1)
    source = JobIdSource((), path, max_jobs=10, recheck_seconds=3600)
    assert loaded(source) == (A,)
    write(path, f"{B}\n", 2)
    assert loaded(source) == (A,)  # within the period: not looked at again


def test_source_keeps_ids_when_file_disappears_or_turns_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jobs.txt"
    write(path, f"{A}\n{B}\n", 1)
    source = JobIdSource((), path, max_jobs=10, recheck_seconds=0)
    assert loaded(source) == (A, B)
    path.unlink()
    with caplog.at_level(logging.WARNING):
        assert loaded(source) == (A, B)
        assert loaded(source) == (A, B)
    assert caplog.text.count("job-ID file unreadable, keeping 2 IDs") == 1  # once an episode
    write(path, b"\xff\xfe not text\n", 2)
    assert loaded(source) == (A, B)
    write(path, f"{C}\n", 3)
    assert loaded(source) == (C,)


def test_source_caps_a_reloaded_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    write(path, f"{A}\n{B}\n{C}\n", 1)
    assert loaded(JobIdSource((), path, max_jobs=2, recheck_seconds=0)) == (A, B)


def test_source_without_file_is_fixed() -> None:
    assert loaded(JobIdSource((A, B), None, max_jobs=10)) == (A, B)


def test_learned_jobs_follow_the_configured_ones_and_are_counted_apart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    write(path, f"{A}\n", 1)
    source = JobIdSource((), path, max_jobs=3, recheck_seconds=0)
    assert loaded(source) == (A,)
    source.learn(B, heard_at=10.0)
    source.learn(B, heard_at=20.0)  # heard of again: still one job, first heard at 10
    assert source.current() == (A, B)
    assert source.learned()[B].learned_at == 10.0
    assert source.learned()[B].last_heard_at == 20.0
    assert source.counts() == {"configured": 1, "webhook": 1}
    write(path, f"{A}\n{B}\n", 2)  # the operator now names the learned job too
    assert loaded(source) == (A, B)
    assert source.counts() == {"configured": 2, "webhook": 0}
    assert source.room_for(C)
    source.learn(C, heard_at=30.0)
    assert not source.room_for("dddddddd-0000-0000-0000-000000000004")
    assert source.room_for(C)  # tracked already
    source.forget([B, C])
    assert source.current() == (A, B)  # B stays: it is configured
    assert source.learned() == {}
