"""The state file: what the exporter must not forget across restarts, in SQLite.

Three things live here. The event IDs of stored webhook deliveries, kept for 48 h, so a
redelivery (Cerby retries for a day and delivers at least once) is recognised as a duplicate.
The jobs learned from those events, since nothing else would tell a restarted exporter they
exist. And each job's last good API answer, so a restart neither shows nothing nor refetches
every job at once.

An event is acknowledged to Cerby only after its transaction has committed, and Cerby never
sends an acknowledged event again, so a commit must survive a power loss, not only a crash of
the process. Hence `synchronous=FULL` with the WAL journal: every commit fsyncs the WAL before
it returns. (`NORMAL` would only survive a process crash: a WAL commit not yet checkpointed may
be rolled back by a power loss, losing events already answered with 2xx.) The fsync is the
costly part, so `AsyncState` shares it: every write arriving while a commit is under way joins
the next transaction (group commit), however many there are.

A file that is not a state file, is corrupt, cannot be opened or has a newer schema stops the
exporter with one line saying so: starting empty over it would silently drop what it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

from cerby_exporter.model import InvalidJob, Job, job_document, parse_job_body

log = logging.getLogger(__name__)

T = TypeVar("T")

APPLICATION_ID: Final = 0x43524259
"""`PRAGMA application_id` of a state file ("CRBY"): tells it from any other SQLite file."""
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (  # 0 -> 1
        "CREATE TABLE learned ("
        " job_id TEXT PRIMARY KEY, learned_at REAL NOT NULL, last_heard_at REAL NOT NULL"
        ") WITHOUT ROWID",
        "CREATE TABLE events ("
        " event_id TEXT PRIMARY KEY, job_id TEXT, event_type TEXT NOT NULL,"
        " received_at REAL NOT NULL"
        ") WITHOUT ROWID",
        "CREATE INDEX events_by_received_at ON events (received_at)",
        "CREATE TABLE jobs ("
        " job_id TEXT PRIMARY KEY, body BLOB NOT NULL, fetched_at REAL NOT NULL"
        ") WITHOUT ROWID",
    ),
)
"""Entry `i` takes the schema from version `i` to `i + 1`: a release that changes the schema
appends one, and older files are brought up to date when opened."""
SCHEMA_VERSION: Final = len(MIGRATIONS)
DEFAULT_BUSY_TIMEOUT: Final = 1.0
"""Seconds a write waits for a lock held by another connection before giving up: short,
because a webhook delivery waits for it and Cerby retries a 503 anyway."""
_PROBLEMS: Final = {
    "SQLITE_NOTADB": "not a SQLite database",
    "SQLITE_CORRUPT": "corrupt",
    "SQLITE_CANTOPEN": "cannot be opened",
    "SQLITE_PERM": "permission denied",
    "SQLITE_READONLY": "read-only",
    "SQLITE_BUSY": "locked by another process",
    "SQLITE_LOCKED": "locked by another process",
    "SQLITE_FULL": "disk full",
    "SQLITE_IOERR": "I/O error",
}
QUICK_CHECK_CHARS: Final = 200
"""How much of SQLite's description of a corruption the error line quotes."""
_MOVE_ASIDE: Final = "; move it aside to start with an empty state"


class StateError(Exception):
    """The state file cannot be used at all; the message is one line naming the file."""


class StateUnavailable(Exception):
    """A write or read failed this time (locked, disk full, I/O error); the store is still
    usable and the next call may succeed."""


@dataclass(frozen=True, slots=True)
class Learned:
    """A job learned from webhooks: when first heard of, and when last."""

    learned_at: float
    last_heard_at: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the state file held when the exporter started."""

    learned: dict[str, Learned]
    jobs: dict[str, tuple[Job, float]]
    """Each job's last good data, parsed again from the stored API answer, and the wall time
    it was fetched. A body that no longer parses is left out (and logged)."""
    last_event: float
    """Wall time the latest stored event was received; 0.0 if none is stored."""


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _problem(path: Path, exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    problem = _PROBLEMS.get("_".join(name.split("_")[:2]), "unusable")
    hint = _MOVE_ASIDE if problem in ("not a SQLite database", "corrupt") else ""
    return _one_line(f"state file {path}: {problem} ({exc}){hint}")


# Writes, each run inside a transaction of `StateStore._commit`; each answers how many rows it
# added or removed.


@dataclass(frozen=True, slots=True)
class _RecordEvent:
    event_id: str
    job_id: str | None
    event_type: str
    received_at: float

    def run(self, db: sqlite3.Connection) -> int:
        added = db.execute(
            "INSERT INTO events (event_id, job_id, event_type, received_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            (self.event_id, self.job_id, self.event_type, self.received_at),
        ).rowcount
        if added and self.job_id is not None:
            # max(): a clock stepped back must not make a job look long unheard of.
            db.execute(
                "INSERT INTO learned (job_id, learned_at, last_heard_at) VALUES (?, ?, ?)"
                " ON CONFLICT (job_id) DO UPDATE"
                " SET last_heard_at = max(last_heard_at, excluded.last_heard_at)",
                (self.job_id, self.received_at, self.received_at),
            )
        return added


@dataclass(frozen=True, slots=True)
class _SaveJob:
    job_id: str
    body: bytes
    fetched_at: float

    def run(self, db: sqlite3.Connection) -> int:
        return db.execute(
            "INSERT INTO jobs (job_id, body, fetched_at) VALUES (?, ?, ?)"
            " ON CONFLICT (job_id) DO UPDATE SET body = excluded.body,"
            " fetched_at = excluded.fetched_at",
            (self.job_id, self.body, self.fetched_at),
        ).rowcount


@dataclass(frozen=True, slots=True)
class _KeepJob:
    """A job as fetched, written as an API answer again: encoded in the worker thread, so a
    round of thousands of fetches holds one small object each until the commit, not the bytes."""

    job_id: str
    job: Job
    fetched_at: float

    def run(self, db: sqlite3.Connection) -> int:
        try:
            body = job_document(self.job)
        except (ValueError, OverflowError) as exc:  # one job must not fail a shared commit
            log.warning("job %s not written to the state file: %s", self.job_id, exc)
            return 0
        return _SaveJob(self.job_id, body, self.fetched_at).run(db)


@dataclass(frozen=True, slots=True)
class _ForgetJobs:
    job_ids: tuple[str, ...]

    def run(self, db: sqlite3.Connection) -> int:
        rows = [(job_id,) for job_id in self.job_ids]
        removed = db.executemany("DELETE FROM learned WHERE job_id = ?", rows).rowcount
        return removed + db.executemany("DELETE FROM jobs WHERE job_id = ?", rows).rowcount


@dataclass(frozen=True, slots=True)
class _PurgeEvents:
    older_than: float

    def run(self, db: sqlite3.Connection) -> int:
        return db.execute("DELETE FROM events WHERE received_at < ?", (self.older_than,)).rowcount


_Write = _RecordEvent | _SaveJob | _KeepJob | _ForgetJobs | _PurgeEvents


class StateStore:
    """The state file, opened. Blocking: used by one thread at a time (`AsyncState` gives it a
    thread of its own); each write method is one durable transaction."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db
        self.commits = 0
        """Transactions committed since opening: how far group commit shares them."""

    @classmethod
    def open(cls, path: Path | str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> StateStore:
        """Open or create the file (not its directory), check it, bring its schema up to date.

        Raises `StateError` for anything that makes the file unusable."""
        path = Path(path)
        _create(path)
        try:
            # Opened here, used by AsyncState's worker thread: never two threads at once.
            db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateError(_problem(path, exc)) from None
        try:
            _prepare(path, db)
        except sqlite3.Error as exc:
            db.close()
            raise StateError(_problem(path, exc)) from None
        except StateError:
            db.close()
            raise
        return cls(path, db)

    def record_event(
        self, event_id: str, job_id: str | None, event_type: str, received_at: float
    ) -> bool:
        """Store an event and learn its job; False, changing nothing, if already stored."""
        return bool(self._commit([_RecordEvent(event_id, job_id, event_type, received_at)])[0])

    def save_job(self, job_id: str, body: bytes, fetched_at: float) -> None:
        """Keep a job's API answer (replacing the one before)."""
        self._commit([_SaveJob(job_id, body, fetched_at)])

    def forget_jobs(self, job_ids: Iterable[str]) -> None:
        """Forget jobs as learned ones and drop their data; their events stay (duplicates)."""
        self._commit([_ForgetJobs(tuple(job_ids))])

    def purge_events(self, older_than: float) -> int:
        """Drop events received before `older_than` (wall seconds); answers how many."""
        return self._commit([_PurgeEvents(older_than)])[0]

    def load(self) -> Snapshot:
        """Everything the exporter restores at start."""
        try:
            learned = {
                job_id: Learned(learned_at, last_heard_at)
                for job_id, learned_at, last_heard_at in self._db.execute(
                    "SELECT job_id, learned_at, last_heard_at FROM learned"
                )
            }
            rows = self._db.execute("SELECT job_id, body, fetched_at FROM jobs").fetchall()
            (last_event,) = self._db.execute("SELECT max(received_at) FROM events").fetchone()
        except sqlite3.Error as exc:
            raise StateUnavailable(_one_line(f"state file {self.path}: {exc}")) from None
        jobs: dict[str, tuple[Job, float]] = {}
        unreadable: list[str] = []
        for job_id, body, fetched_at in rows:
            try:
                jobs[job_id] = (parse_job_body(bytes(body), job_id), fetched_at)
            except InvalidJob:
                unreadable.append(job_id)
        if unreadable:
            log.warning(
                "state file %s: stored data of %d jobs does not parse, they will be fetched "
                "again (first: %s)",
                self.path,
                len(unreadable),
                unreadable[0],
            )
        return Snapshot(learned, jobs, float(last_event or 0.0))

    def close(self) -> None:
        self._db.close()

    def _commit(self, writes: Sequence[_Write]) -> list[int]:
        """Run the writes in order in one transaction; all of them are stored, or none.

        Any failure rolls back and raises `StateUnavailable`, leaving no transaction open, so
        the next call starts clean."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            results = [write.run(self._db) for write in writes]
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StateUnavailable(_one_line(f"state file {self.path}: {exc}")) from None
        except BaseException:
            self._rollback()
            raise
        self.commits += 1
        return results

    def _rollback(self) -> None:
        if self._db.in_transaction:
            # It fails if SQLite rolled back by itself, as it does after some I/O errors.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


def _create(path: Path) -> None:
    """Make sure the file exists and can be opened for writing, with a plain OS error if not
    (SQLite says only "unable to open database file"). A new file is readable by its owner
    alone, since job data names accounts and people; SQLite gives its WAL the same mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
    except FileExistsError:
        created = False
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise StateError(_one_line(f"state file {path}: {exc.strerror}")) from None
    except OSError as exc:
        raise StateError(_one_line(f"state file {path}: {exc.strerror}")) from None
    os.close(fd)
    if created:
        # The new name itself must survive a power loss, or so would nothing stored in it.
        try:
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise StateError(_one_line(f"state file {path}: {exc.strerror}")) from None


def _prepare(path: Path, db: sqlite3.Connection) -> None:
    """Check the file is a sound state file of a schema this release knows, then migrate."""
    application_id, version = _identity(db)
    if application_id not in (0, APPLICATION_ID) or (application_id == 0 and _has_tables(db)):
        raise StateError(
            f"state file {path}: a SQLite database, but not a cerby-exporter state file"
            f"{_MOVE_ASIDE}"
        )
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state file {path}: schema version {version} was written by a newer "
            f"cerby-exporter; this one knows up to version {SCHEMA_VERSION}"
        )
    (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise StateError(f"state file {path}: cannot use the WAL journal (got {mode})")
    db.execute("PRAGMA synchronous = FULL")
    (verdict,) = db.execute("PRAGMA quick_check(1)").fetchone()
    if verdict != "ok":
        found = _one_line(str(verdict))[:QUICK_CHECK_CHARS]
        raise StateError(f"state file {path}: corrupt (quick_check: {found}){_MOVE_ASIDE}")
    if version < SCHEMA_VERSION:
        _migrate(db, version)


def _identity(db: sqlite3.Connection) -> tuple[int, int]:
    """The first read of the file: where SQLite finds out it is not a database at all."""
    (application_id,) = db.execute("PRAGMA application_id").fetchone()
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(application_id), int(version)


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchone() is not None


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """One transaction from `version` to `SCHEMA_VERSION`: a migration cut short by a crash
    leaves the file as it was (DDL is transactional in SQLite)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class AsyncState:
    """The store for the event loop: every call runs in one worker thread of its own, never on
    the loop, and writes are grouped into shared transactions.

    Writes queue up in the order they are called. While the worker commits one batch, the
    next one gathers; it is committed as soon as the worker is free, so a lone write waits for
    nothing but its own commit, and a burst pays one fsync per batch instead of one per write.
    Each caller's await returns only once the transaction holding its write has committed;
    `keep_job` is the one write nobody awaits (see there).
    """

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        self._queue: list[tuple[_Write, asyncio.Future[int] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def commits(self) -> int:
        return self._store.commits

    async def record_event(
        self, event_id: str, job_id: str | None, event_type: str, received_at: float
    ) -> bool:
        """`StateStore.record_event`, answered once the event is on disk."""
        return bool(await self._write(_RecordEvent(event_id, job_id, event_type, received_at)))

    def keep_job(self, job_id: str, job: Job, fetched_at: float) -> None:
        """Queue a fetched job for the next commit, without waiting: the cache stores thousands
        of jobs in a round, and a task or future for each would be held until its commit. The
        state file is what a restart starts from, not a promise to anyone, so a failed commit
        is logged and the next fetch of the job writes it again."""
        self._enqueue(_KeepJob(job_id, job, fetched_at), None)

    async def drain(self) -> None:
        """Until every write queued so far has been committed, or has failed."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])

    async def forget_jobs(self, job_ids: Iterable[str]) -> None:
        await self._write(_ForgetJobs(tuple(job_ids)))

    async def purge_events(self, older_than: float) -> int:
        return await self._write(_PurgeEvents(older_than))

    async def load(self) -> Snapshot:
        """`StateStore.load`: sees every write whose await has returned."""
        if self._closed:
            raise StateUnavailable(f"state file {self.path}: closed")
        return await self._run(self._store.load)

    async def close(self) -> None:
        """Commit what is queued, then close the file; writes after this raise
        `StateUnavailable`."""
        if self._closed:
            return
        self._closed = True
        await self.drain()
        await self._run(self._store.close)
        self._worker.shutdown(wait=False)

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, call)

    def _write(self, write: _Write) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(write, future)
        return future

    def _enqueue(self, write: _Write, future: asyncio.Future[int] | None) -> None:
        if self._closed:
            raise StateUnavailable(f"state file {self.path}: closed")
        self._queue.append((write, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="state-commit"
            )

    async def _flush(self) -> None:
        """Commit batches until the queue is empty: each one is all that queued meanwhile."""
        while self._queue:
            batch, self._queue = self._queue, []
            writes = [write for write, _ in batch]
            try:
                results = await self._run(partial(self._store._commit, writes))
            except asyncio.CancelledError:
                for _, future in [*batch, *self._queue]:
                    if future is not None:
                        future.cancel()
                self._queue = []
                raise
            except Exception as exc:
                kept = sum(future is None for _, future in batch)
                if kept:
                    log.warning("data of %d jobs not written to the state file: %s", kept, exc)
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future is not None and not future.done():  # its caller may have gone
                    future.set_result(result)
