"""The job cache: what each job looked like when last fetched, and when to ask Cerby again.

Two stores with two jobs. A `TLRUCache` answers "is this job fresh?", each entry living as long
as its state deserves (a job in flight may change any minute; a finished one almost never does).
An `LRUCache` keeps the last good data of every job regardless of freshness, so a job whose
refresh fails is still shown, marked as failed, instead of vanishing from the alerts.

Fetches of expired jobs run on a pool of `max_concurrency` threads. Single-flight: a job being
fetched is never fetched a second time at once; a concurrent scrape waits for the same future.

A refresh that finds every job fresh remembers until when that stays true (the earliest expiry
among them): until then, unless new data is stored, a refresh of the same IDs costs a comparison
instead of a look-up per job, which is what keeps a warm scrape of 10 000 jobs cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Protocol

from cachetools import LRUCache, TLRUCache

from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.client import Attempt, BackedOff, FetchError
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import Job

log = logging.getLogger(__name__)

MAX_IDS_IN_LOG_LINE = 5
LOGGED_BY_CLIENT = frozenset({"unauthorized", "rate_limited"})
"""Failure reasons the client logs once per episode, so a round's summary need not repeat."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A job as the exporter knows it: last good data, and how the latest fetch went."""

    job: Job | None
    fetched_at: float | None
    """Wall-clock time the data in `job` was fetched."""
    error: str | None
    """Reason the latest fetch failed; `None` if it succeeded."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class TTLPolicy:
    in_flight: float
    terminal: float

    def seconds(self, entry: Entry) -> float:
        """Terminal jobs keep for long; anything in flight, or a failed fetch, soon retries."""
        if entry.ok and entry.job is not None and entry.job.is_terminal:
            return self.terminal
        return self.in_flight


def next_due(previous_due: float | None, ttl: float, now: float) -> float:
    """When a job just fetched is due again: one TTL after it was last due, not after `now`.

    A refresh happens at the first scrape after the job fell due, some seconds late; counting
    the TTL from then would stretch every period by that lag. Keeping the schedule makes Cerby
    see exactly one request per job per TTL, whatever the scrape intervals. After a gap longer
    than a TTL (no scrape for a while) the schedule starts again from now.
    """
    if previous_due is not None:
        due = previous_due + ttl
        if due > now:
            return due
    return now + ttl


class JobFetcher(Protocol):
    def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]: ...


@dataclass(frozen=True, slots=True)
class Round:
    """What a refresh leaves: the entries, and whether Cerby last answered with our key."""

    entries: dict[str, Entry]
    key_accepted: bool | None
    """The verdict of the latest round that got answers, finished in time or not; None if no
    round has sent a request yet."""
    version: int = -1
    """`JobCache.version` when `entries` were read: what a rendering of them is keyed on."""


@dataclass(frozen=True, slots=True)
class _AllFresh:
    """Every job of `ids` stays fresh until the clock reaches `until`, unless data is stored."""

    ids: tuple[str, ...]
    version: int
    until: float
    entries: dict[str, Entry]


class JobCache:
    def __init__(
        self,
        fetcher: JobFetcher,
        policy: TTLPolicy,
        metrics: ExporterMetrics,
        gate: RateLimitGate,
        *,
        max_jobs: int,
        max_concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetcher = fetcher
        self._policy = policy
        self._metrics = metrics
        self._gate = gate
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        # Room for every tracked job plus as many probed ones.
        self._fresh: TLRUCache[str, Entry] = TLRUCache(
            maxsize=2 * max_jobs, ttu=self._expires_at, timer=clock
        )
        self._known: LRUCache[str, Entry] = LRUCache(maxsize=2 * max_jobs)
        self._inflight: dict[str, Future[tuple[Entry, Attempt | None]]] = {}
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="cerby-fetch")
        self._unknown_statuses: set[str] = set()
        self._round = 0
        self._verdicts: dict[int, bool] = {}
        self._closed = False
        self._expiries: dict[str, float] = {}
        self._all_fresh: _AllFresh | None = None
        self.version = 0
        """Incremented whenever any entry changes: renderers key their caches on it."""

    def _expires_at(self, key: str, entry: Entry, now: float) -> float:
        expires = next_due(self._expiries.get(key), self._policy.seconds(entry), now)
        self._expiries[key] = expires
        return expires

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def peek(self, job_ids: Iterable[str]) -> dict[str, Entry]:
        """What is known now, without fetching anything."""
        with self._lock:
            return {i: e for i in job_ids if (e := self._known.get(i)) is not None}

    def refresh(self, job_ids: Iterable[str], deadline: float) -> Round:
        """Bring expired jobs up to date, waiting for fetches until the (monotonic) deadline.

        Fetches still running at the deadline go on and fill the cache for the next scrape.
        """
        ids = tuple(job_ids)
        fresh = self._all_fresh
        if (
            fresh is not None
            and fresh.version == self.version
            and (fresh.ids is ids or fresh.ids == ids)
            and self._clock() < fresh.until
        ):
            self._metrics.count_cache(len(ids), 0, 0)
            return Round(fresh.entries, self.key_verdict(), fresh.version)
        counts: Counter[str] = Counter()
        waiting: list[Future[tuple[Entry, Attempt | None]]] = []
        backed_off = self._gate.closed()
        until = float("inf")
        with self._lock:
            round_id = self._round + 1
            for job_id in ids:
                if job_id in self._fresh:
                    counts["hit"] += 1
                    until = min(until, self._expiries.get(job_id, -float("inf")))
                    continue
                known = self._known.get(job_id)
                counts["stale" if known is not None and known.job is not None else "miss"] += 1
                future = self._inflight.get(job_id)
                if future is None:
                    if backed_off or self._closed:
                        continue
                    future = self._pool.submit(self._fetch, job_id, deadline, round_id)
                    self._inflight[job_id] = future
                    self._round = round_id
                waiting.append(future)
            if counts["hit"] == len(ids):
                fresh = _AllFresh(ids, self.version, until, self._snapshot(ids))
                self._all_fresh = fresh
        self._metrics.count_cache(counts["hit"], counts["miss"], counts["stale"])
        if counts["hit"] == len(ids) and fresh is not None:
            return Round(fresh.entries, self.key_verdict(), fresh.version)
        if waiting:
            wait(waiting, timeout=max(0.0, deadline - self._clock()))
        finished = [f.result() for f in waiting if f.done() and not f.cancelled()]
        self._log_failures(entry for entry, _ in finished)
        with self._lock:
            entries, version = self._snapshot(ids), self.version
        return Round(entries, self.key_verdict(), version)

    def _snapshot(self, ids: tuple[str, ...]) -> dict[str, Entry]:
        """The known entries of `ids`, read under the lock the caller holds."""
        return {i: e for i in ids if (e := self._known.get(i)) is not None}

    def key_verdict(self) -> bool | None:
        """Did the latest round with answers reach Cerby with an accepted key?

        A round is the set of fetches one refresh started; its verdict is True if any of them
        got an answer taking our key, so one job's 5xx does not flip it while others succeed.
        """
        with self._lock:
            return self._verdicts[max(self._verdicts)] if self._verdicts else None

    def check_key(self, check: Callable[[float], bool | None], deadline: float) -> None:
        """Run a key check on the pool as a round of its own, waiting until the deadline."""
        with self._lock:
            if self._inflight or self._closed:
                return  # rounds under way will give a verdict
            self._round += 1
            round_id = self._round
        try:
            future = self._pool.submit(self._run_check, check, deadline, round_id)
        except RuntimeError:  # closed while we were not holding the lock
            return
        wait([future], timeout=max(0.0, deadline - self._clock()))

    def _run_check(
        self, check: Callable[[float], bool | None], deadline: float, round_id: int
    ) -> None:
        verdict = check(deadline)
        if verdict is not None:
            self._record_verdict(round_id, verdict)

    def _record_verdict(self, round_id: int, accepted: bool) -> None:
        with self._lock:
            self._verdicts[round_id] = self._verdicts.get(round_id, False) or accepted
            for old in [r for r in self._verdicts if r < round_id - 8]:
                del self._verdicts[old]

    def _fetch(self, job_id: str, deadline: float, round_id: int) -> tuple[Entry, Attempt | None]:
        """Runs on the pool: fetch, store, and release the single-flight slot, all or nothing."""
        attempt: Attempt | None = None
        try:
            result, attempt = self._fetcher.fetch_job(job_id, deadline)
        except BackedOff:
            result = None
        except Exception as exc:  # a bug must not wedge the job's single-flight slot
            log.error("unexpected error fetching job %s: %s", job_id, type(exc).__name__)
            result = FetchError("transport", type(exc).__name__)
        with self._lock:
            previous = self._known.get(job_id) or Entry(None, None, None)
            if result is None:
                entry = previous
            elif isinstance(result, FetchError):
                self._metrics.count_fetch_error(result.reason)
                entry = replace(previous, error=result.reason)
            else:
                self._note_status(result)
                entry = Entry(result, self._wall(), None)
            if result is not None:
                self._known[job_id] = entry
                self._fresh[job_id] = entry
                self.version += 1
                if len(self._expiries) > 2 * self._known.maxsize:
                    self._expiries = {i: t for i, t in self._expiries.items() if i in self._known}
            self._inflight.pop(job_id, None)
        if attempt is not None and attempt.requests > 0:
            self._record_verdict(round_id, bool(attempt.key_accepted))
        return entry, attempt

    def _note_status(self, job: Job) -> None:
        raw = job.raw_status
        if job.status == "unknown" and raw is not None and raw not in self._unknown_statuses:
            self._unknown_statuses.add(raw)
            log.warning("job %s has a status Cerby does not document: %.40r", job.id, raw)

    def _log_failures(self, entries: Iterable[Entry]) -> None:
        """One line per round, however many jobs failed in it.

        A refused key and a 429 are not repeated here at warning level: the client logs each
        once when it starts (and the key again when it is accepted), not once a round.
        """
        reasons = Counter(entry.error for entry in entries if entry.error is not None)
        if reasons:
            summary = " ".join(f"{reason}={n}" for reason, n in sorted(reasons.items()))
            quiet = set(reasons) <= LOGGED_BY_CLIENT
            log.log(logging.DEBUG if quiet else logging.WARNING, "job fetches failed: %s", summary)
