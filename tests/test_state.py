"""The state file on real SQLite files: what is written is read back, a damaged file stops the
exporter with one line instead of starting empty, and an acknowledged event survives kill -9."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cerby_exporter.model import parse_job_body
from cerby_exporter.state import (
    SCHEMA_VERSION,
    AsyncState,
    Learned,
    Snapshot,
    StateError,
    StateStore,
    StateUnavailable,
)
from tests.support import FAILED, FINISHED, REPO, RUNNING, clean_env, job_attributes

HOUR = 3600.0


def body(job_id: str, **changes: Any) -> bytes:
    document = {
        "data": {"id": job_id, "type": "job", "attributes": job_attributes(**changes)},
        "links": {"self": f"/api/v1/jobs/{job_id}"},
        "meta": {},
    }
    return json.dumps(document).encode()


def rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    """What another connection finds in the file: what is on disk, not in the store's memory."""
    db = sqlite3.connect(path)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def events(path: Path) -> list[tuple[Any, ...]]:
    return rows(path, "SELECT event_id, job_id, event_type, received_at FROM events ORDER BY 1")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"


@pytest.fixture
def store(path: Path) -> Iterator[StateStore]:
    opened = StateStore.open(path)
    yield opened
    opened.close()


def test_every_table_round_trips(path: Path) -> None:
    store = StateStore.open(path)
    assert store.record_event("ev-1", FINISHED, "automation.succeeded", 100.0) is True
    assert store.record_event("ev-2", FAILED, "automation.failed", 110.0) is True
    assert store.record_event("ev-3", None, "account.created", 120.0) is True
    store.save_job(FINISHED, body(FINISHED), 105.5)
    store.save_job(FAILED, body(FAILED, status="error", canRetry=False), 111.0)
    store.close()

    reopened = StateStore.open(path)
    snapshot = reopened.load()
    reopened.close()
    assert snapshot.learned == {
        FINISHED: Learned(learned_at=100.0, last_heard_at=100.0),
        FAILED: Learned(learned_at=110.0, last_heard_at=110.0),
    }
    assert set(snapshot.jobs) == {FINISHED, FAILED}
    finished, fetched_at = snapshot.jobs[FINISHED]
    assert (finished.id, finished.status, finished.workflow_type, fetched_at) == (
        FINISHED,
        "finished",
        "password_rotation",
        105.5,
    )
    failed, fetched_at = snapshot.jobs[FAILED]
    assert (failed.status, failed.can_retry, fetched_at) == ("error", False, 111.0)
    assert failed.account_name == "Brand One"
    assert snapshot.last_event == 120.0
    assert events(path) == [
        ("ev-1", FINISHED, "automation.succeeded", 100.0),
        ("ev-2", FAILED, "automation.failed", 110.0),
        ("ev-3", None, "account.created", 120.0),
    ]
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_an_empty_file_loads_as_nothing(store: StateStore) -> None:
    snapshot = store.load()
    assert (snapshot.learned, snapshot.jobs, snapshot.last_event) == ({}, {}, 0.0)


def test_a_new_file_is_readable_by_its_owner_only(path: Path, store: StateStore) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_duplicate_event_changes_nothing(path: Path, store: StateStore) -> None:
    assert store.record_event("ev-1", FINISHED, "automation.succeeded", 100.0) is True
    commits = store.commits
    assert store.record_event("ev-1", RUNNING, "automation.failed", 500.0) is False
    assert events(path) == [("ev-1", FINISHED, "automation.succeeded", 100.0)]
    assert store.load().learned == {FINISHED: Learned(100.0, 100.0)}
    assert store.commits == commits + 1


def test_a_job_heard_of_again_keeps_when_it_was_learned(store: StateStore) -> None:
    store.record_event("ev-1", RUNNING, "automation.failed", 100.0)
    store.record_event("ev-2", RUNNING, "automation.succeeded", 250.0)
    assert store.load().learned == {RUNNING: Learned(learned_at=100.0, last_heard_at=250.0)}
    store.record_event("ev-3", RUNNING, "automation.succeeded", 200.0)  # clock stepped back
    assert store.load().learned == {RUNNING: Learned(learned_at=100.0, last_heard_at=250.0)}


def test_saving_a_job_again_replaces_its_data(store: StateStore) -> None:
    store.save_job(RUNNING, body(RUNNING, status="running"), 10.0)
    store.save_job(RUNNING, body(RUNNING, status="finished"), 20.0)
    job, fetched_at = store.load().jobs[RUNNING]
    assert (job.status, fetched_at) == ("finished", 20.0)


def test_stored_data_that_no_longer_parses_is_left_out(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_job(FINISHED, body(FINISHED), 10.0)
    store.save_job(RUNNING, b"not json", 10.0)
    with caplog.at_level(logging.WARNING, logger="cerby_exporter.state"):
        snapshot = store.load()
    assert set(snapshot.jobs) == {FINISHED}
    assert [r.getMessage() for r in caplog.records] == [
        f"state file {store.path}: stored data of 1 jobs does not parse, they will be fetched "
        f"again (first: {RUNNING})"
    ]


def test_purge_keeps_events_younger_than_48_hours(path: Path, store: StateStore) -> None:
    now = 1_764_621_663.0
    store.record_event("old", FINISHED, "automation.succeeded", now - 49 * HOUR)
    store.record_event("edge", FINISHED, "automation.succeeded", now - 48 * HOUR)
    store.record_event("young", FINISHED, "automation.succeeded", now - 47 * HOUR)
    store.record_event("new", RUNNING, "automation.failed", now - 1)
    assert store.purge_events(now - 48 * HOUR) == 1
    assert [e[0] for e in events(path)] == ["edge", "new", "young"]
    assert store.record_event("young", FINISHED, "automation.succeeded", now) is False
    assert store.record_event("old", FINISHED, "automation.succeeded", now) is True
    assert set(store.load().learned) == {FINISHED, RUNNING}  # purging forgets no job


def test_forgetting_a_job_drops_its_learned_row_and_data_not_its_events(
    path: Path, store: StateStore
) -> None:
    for n, job_id in enumerate((FINISHED, FAILED, RUNNING)):
        store.record_event(f"ev-{n}", job_id, "automation.succeeded", float(n))
        store.save_job(job_id, body(job_id), float(n))
    store.forget_jobs([FINISHED, FAILED])
    snapshot = store.load()
    assert set(snapshot.learned) == {RUNNING}
    assert set(snapshot.jobs) == {RUNNING}
    assert len(events(path)) == 3
    assert store.record_event("ev-0", FINISHED, "automation.succeeded", 9.0) is False
    store.forget_jobs([])
    assert set(store.load().learned) == {RUNNING}


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _text(path: Path) -> None:
    path.write_text("job_ids:\n  - 11111111-2222-3333-4444-555555555555\n")


def _real_database(path: Path) -> bytes:
    store = StateStore.open(path)
    for n in range(3000):
        store.record_event(f"event-{n:05d}", f"job-{n % 40}", "automation.failed", float(n))
    store.close()
    return path.read_bytes()


def _truncated(path: Path) -> None:
    data = _real_database(path)
    path.write_bytes(data[: len(data) // 2])


def _page_overwritten(path: Path) -> None:
    data = bytearray(_real_database(path))
    page = 4096
    data[3 * page : 4 * page] = os.urandom(page)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_random_bytes, "not a SQLite database"),
        (_text, "not a SQLite database"),
        (_truncated, "corrupt"),
        (_page_overwritten, "corrupt"),
    ],
)
def test_a_damaged_file_is_refused_and_left_as_it_was(
    path: Path, damage: Any, problem: str
) -> None:
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StateError) as caught:
        StateStore.open(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"state file {path}: {problem} (")
    assert message.endswith("; move it aside to start with an empty state")
    assert path.read_bytes() == before


def test_another_programs_database_is_refused(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE settings (name TEXT, value TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StateError) as caught:
        StateStore.open(path)
    assert str(caught.value) == (
        f"state file {path}: a SQLite database, but not a cerby-exporter state file"
        "; move it aside to start with an empty state"
    )
    assert rows(path, "SELECT name FROM sqlite_schema") == [("settings",)]


def test_a_newer_schema_is_refused(path: Path) -> None:
    StateStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StateError) as caught:
        StateStore.open(path)
    assert str(caught.value) == (
        f"state file {path}: schema version {SCHEMA_VERSION + 1} was written by a newer "
        f"cerby-exporter; this one knows up to version {SCHEMA_VERSION}"
    )


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("", "Is a directory"),
        ("missing/state.sqlite", "No such file or directory"),
        ("file/state.sqlite", "Not a directory"),
    ],
)
def test_a_path_that_cannot_be_a_file_is_refused(tmp_path: Path, where: str, problem: str) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / where
    with pytest.raises(StateError) as caught:
        StateStore.open(target)
    assert str(caught.value) == f"state file {target}: {problem}"


UNREADABLE_CHILD = """
import sys
from cerby_exporter.state import StateError, StateStore
try:
    StateStore.open(sys.argv[1])
except StateError as exc:
    print(exc)
"""


def test_a_file_without_permission_is_refused(path: Path) -> None:
    """chmod 000 stops root only without CAP_DAC_OVERRIDE: when the tests run as root, the
    open happens in a child whose capability bounding set lacks it."""
    StateStore.open(path).close()
    path.chmod(0)
    command = [sys.executable, "-c", UNREADABLE_CHILD, str(path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    done = subprocess.run(
        command, cwd=REPO, env=clean_env(), capture_output=True, text=True, check=True
    )
    assert done.stdout == f"state file {path}: Permission denied\n"


def test_a_locked_file_fails_the_write_and_the_next_one_succeeds(path: Path) -> None:
    store = StateStore.open(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StateUnavailable) as caught:
        store.record_event("ev-1", FINISHED, "automation.succeeded", 1.0)
    assert str(caught.value) == f"state file {path}: database is locked"
    with pytest.raises(StateUnavailable):
        store.save_job(FINISHED, body(FINISHED), 1.0)
    other.execute("ROLLBACK")
    other.close()
    assert store.record_event("ev-1", FINISHED, "automation.succeeded", 2.0) is True
    store.save_job(FINISHED, body(FINISHED), 2.0)
    snapshot = store.load()
    store.close()
    assert snapshot.learned == {FINISHED: Learned(2.0, 2.0)}
    assert snapshot.jobs[FINISHED][1] == 2.0
    assert events(path) == [("ev-1", FINISHED, "automation.succeeded", 2.0)]


def test_concurrent_events_share_commits_and_all_are_stored(path: Path) -> None:
    ids = [f"event-{n:03d}" for n in range(200)]

    async def deliver() -> tuple[list[bool], int]:
        state = AsyncState(StateStore.open(path))
        stored = await asyncio.gather(
            *(
                state.record_event(event_id, f"job-{n % 10}", "automation.failed", float(n))
                for n, event_id in enumerate(ids)
            )
        )
        await state.close()
        return stored, state.commits

    stored, commits = asyncio.run(deliver())
    assert stored == [True] * 200
    assert 1 <= commits < 200
    assert [e[0] for e in events(path)] == ids

    async def reload() -> Snapshot:
        state = AsyncState(StateStore.open(path))
        try:
            return await state.load()
        finally:
            await state.close()

    snapshot = asyncio.run(reload())
    assert snapshot.learned["job-3"] == Learned(learned_at=3.0, last_heard_at=193.0)
    assert len(snapshot.learned) == 10


def test_writes_in_one_batch_apply_in_call_order(store: StateStore) -> None:
    async def writes() -> tuple[list[object], Snapshot]:
        state = AsyncState(store)

        async def keep(job_id: str, fetched_at: float) -> None:
            state.keep_job(job_id, parse_job_body(body(job_id), job_id), fetched_at)

        results = await asyncio.gather(
            state.record_event("ev-1", RUNNING, "automation.failed", 1.0),
            state.record_event("ev-1", RUNNING, "automation.failed", 2.0),
            keep(RUNNING, 1.0),
            state.forget_jobs([RUNNING]),
            state.record_event("ev-2", FINISHED, "automation.succeeded", 3.0),
            keep(FINISHED, 3.0),
            state.purge_events(1.5),
        )
        return list(results), await state.load()

    results, snapshot = asyncio.run(writes())
    assert results == [True, False, None, None, True, None, 1]
    assert snapshot.learned == {FINISHED: Learned(3.0, 3.0)}
    assert set(snapshot.jobs) == {FINISHED}
    assert snapshot.last_event == 3.0


def test_a_locked_file_fails_the_waiting_writes_and_the_next_ones_succeed(path: Path) -> None:
    other = sqlite3.connect(path, isolation_level=None)

    async def deliver_twice() -> tuple[list[bool | BaseException], list[bool]]:
        state = AsyncState(StateStore.open(path, busy_timeout=0.05))
        other.execute("BEGIN EXCLUSIVE")
        failed = await asyncio.gather(
            *(state.record_event(f"ev-{n}", FINISHED, "t", 1.0) for n in range(20)),
            return_exceptions=True,
        )
        other.execute("ROLLBACK")
        stored = await asyncio.gather(
            *(state.record_event(f"ev-{n}", FINISHED, "t", 2.0) for n in range(20))
        )
        await state.close()
        return failed, stored

    failed, stored = asyncio.run(deliver_twice())
    other.close()
    assert [type(f) for f in failed] == [StateUnavailable] * 20
    assert stored == [True] * 20
    assert [e[3] for e in events(path)] == [2.0] * 20


class ThreadRecordingStore(StateStore):
    threads: ClassVar[list[str]] = []

    def load(self) -> Snapshot:
        self.threads.append(threading.current_thread().name)
        return super().load()

    def _commit(self, writes: Any) -> list[int]:
        self.threads.append(threading.current_thread().name)
        return super()._commit(writes)


def test_every_call_runs_in_one_worker_thread_off_the_loop(path: Path) -> None:
    async def calls() -> str:
        state = AsyncState(ThreadRecordingStore.open(path))
        await state.record_event("ev-1", RUNNING, "automation.failed", 1.0)
        state.keep_job(RUNNING, parse_job_body(body(RUNNING), RUNNING), 1.0)
        await asyncio.gather(state.drain(), state.load())
        await state.forget_jobs([RUNNING])
        await state.purge_events(0.0)
        await state.close()
        return threading.current_thread().name

    loop_thread = asyncio.run(calls())
    threads = ThreadRecordingStore.threads
    assert len(threads) == 5
    assert len(set(threads)) == 1
    assert threads[0] != loop_thread


def test_closing_commits_what_is_queued_and_refuses_the_rest(path: Path) -> None:
    async def close_early() -> tuple[list[bool], BaseException | None]:
        state = AsyncState(StateStore.open(path))
        queued = [
            asyncio.ensure_future(state.record_event(f"ev-{n}", RUNNING, "t", float(n)))
            for n in range(50)
        ]
        await asyncio.sleep(0)  # every write is queued
        await state.close()
        refused: BaseException | None = None
        try:
            await state.record_event("late", RUNNING, "t", 99.0)
        except StateUnavailable as exc:
            refused = exc
        await state.close()
        return [await f for f in queued], refused

    stored, refused = asyncio.run(close_early())
    assert stored == [True] * 50
    assert str(refused) == f"state file {path}: closed"
    assert len(events(path)) == 50


def test_kept_jobs_are_written_in_shared_commits_in_call_order(path: Path) -> None:
    ids = [f"job-{n:03d}" for n in range(300)]

    async def keep() -> tuple[Snapshot, int]:
        state = AsyncState(StateStore.open(path))
        for n, job_id in enumerate(ids):
            state.keep_job(job_id, parse_job_body(body(job_id), job_id), float(n))
        await state.forget_jobs([ids[0]])
        state.keep_job(ids[1], parse_job_body(body(ids[1], status="error"), ids[1]), 999.0)
        await state.drain()
        snapshot = await state.load()
        await state.close()
        return snapshot, state.commits

    snapshot, commits = asyncio.run(keep())
    assert 1 <= commits < 100
    assert set(snapshot.jobs) == set(ids[1:])
    assert snapshot.jobs[ids[1]][0].status == "error"
    assert snapshot.jobs[ids[1]][1] == 999.0
    assert snapshot.jobs[ids[2]] == (parse_job_body(body(ids[2]), ids[2]), 2.0)
    on_disk = rows(path, "SELECT job_id, fetched_at FROM jobs WHERE job_id = 'job-299'")
    assert on_disk == [("job-299", 299.0)]


def test_a_kept_job_that_cannot_be_encoded_fails_only_itself(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = parse_job_body(body(FINISHED), FINISHED)
    unwritable = replace(parse_job_body(body(RUNNING), RUNNING), created_at=1e20)

    async def keep() -> Snapshot:
        state = AsyncState(StateStore.open(path))
        state.keep_job(RUNNING, unwritable, 1.0)
        state.keep_job(FINISHED, good, 1.0)
        await state.forget_jobs([FAILED])  # in the same commit: it must not fail with them
        snapshot = await state.load()
        await state.close()
        return snapshot

    with caplog.at_level(logging.WARNING, logger="cerby_exporter.state"):
        snapshot = asyncio.run(keep())
    assert set(snapshot.jobs) == {FINISHED}
    [record] = caplog.records
    assert record.getMessage().startswith(f"job {RUNNING} not written to the state file: ")


def test_a_kept_job_that_fails_is_logged_and_the_next_one_is_written(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    job = parse_job_body(body(FINISHED), FINISHED)

    async def keep_twice() -> BaseException | None:
        state = AsyncState(StateStore.open(path, busy_timeout=0.05))
        other.execute("BEGIN EXCLUSIVE")
        state.keep_job(FINISHED, job, 1.0)
        state.keep_job(RUNNING, parse_job_body(body(RUNNING), RUNNING), 1.0)
        await state.drain()
        other.execute("ROLLBACK")
        state.keep_job(FINISHED, job, 2.0)
        await state.drain()
        await state.close()
        try:
            state.keep_job(FINISHED, job, 3.0)
        except StateUnavailable as exc:
            return exc
        return None

    with caplog.at_level(logging.WARNING, logger="cerby_exporter.state"):
        refused = asyncio.run(keep_twice())
    other.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"data of 2 jobs not written to the state file: state file {path}: database is locked"
    ]
    assert rows(path, "SELECT job_id, fetched_at FROM jobs") == [(FINISHED, 2.0)]
    assert str(refused) == f"state file {path}: closed"


KILLED_CHILD = """
import asyncio
import sys

from cerby_exporter.state import AsyncState, StateStore


async def deliver(state, n, slots):
    event_id = f"event-{n:07d}"
    await state.record_event(event_id, f"job-{n % 7}", "automation.failed", float(n))
    print(event_id, flush=True)
    slots.release()


async def main():
    state = AsyncState(StateStore.open(sys.argv[1]))
    slots = asyncio.Semaphore(50)  # always writes in flight, whenever the kill comes
    running = set()
    n = 0
    while True:
        await slots.acquire()
        task = asyncio.create_task(deliver(state, n, slots))
        running.add(task)
        task.add_done_callback(running.discard)
        n += 1


asyncio.run(main())
"""


def test_every_acknowledged_event_survives_kill_9(path: Path, tmp_path: Path) -> None:
    with (tmp_path / "child.err").open("w+") as errors:
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_CHILD, str(path)],
            cwd=REPO,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert child.stdout is not None
        acknowledged: list[str] = []
        try:
            while len(acknowledged) < 517:
                line = child.stdout.readline()
                if not line:
                    errors.seek(0)
                    pytest.fail(f"child ended early: {errors.read()}")
                acknowledged.append(line.strip())
            child.send_signal(signal.SIGKILL)
            # Lines the child printed before it died are acknowledgements too.
            acknowledged += [line.strip() for line in child.stdout if line.endswith("\n")]
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    store = StateStore.open(path)
    snapshot = store.load()
    store.close()
    stored = {e[0] for e in events(path)}
    assert set(acknowledged) <= stored
    assert len(snapshot.learned) == 7
