"""The job cache: what each job looked like when last fetched, and when to ask Cerby again.

An `LRUCache` keeps the last good data of every job, so a job whose refresh fails is still
shown, marked as failed, instead of vanishing from the alerts. Beside it, each job's due time
answers "is this job fresh?": a job is fresh until it falls due, one TTL as long as its state
deserves (a job in flight may change any minute; a finished one almost never does). A due time
is overwritten in place at every fetch: a round that refreshes thousands of jobs changes no
table's size, where a cache that drops expired keys and takes them back rebuilds its tables.

Fetches of expired jobs are tasks on the event loop, at most `max_concurrency` of them talking
to Cerby at once. Single-flight: a job being fetched is never fetched a second time at once; a
concurrent scrape waits for the same task. A scrape waits for its fetches until its deadline (or
until the exporter stops); the fetches still running then go on and fill the cache for the next.

A refresh that finds every job fresh remembers until when that stays true (the earliest expiry
among them): until then, unless new data is stored, a refresh of the same IDs costs a comparison
instead of a look-up per job, which is what keeps a warm scrape of 10 000 jobs cheap.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cachetools import LRUCache

from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.client import Attempt, BackedOff, FetchError
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import Job

log = logging.getLogger(__name__)

NEVER_DUE = -float("inf")
"""The due time of a job never fetched: it is not fresh."""
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
    async def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]: ...


class Round:
    """What a refresh leaves: the entries of its jobs, and whether Cerby last answered with our
    key.

    The entries are read from the cache when first asked for, not copied by every refresh: a
    scrape whose job part still stands never looks at them, and a copy held from one refresh to
    the next would keep a whole round's replaced entries alive while the new ones arrive."""

    __slots__ = ("_entries", "_known", "ids", "key_accepted", "version")

    def __init__(
        self,
        ids: tuple[str, ...],
        known: Mapping[str, Entry],
        key_accepted: bool | None,
        version: int = -1,
    ) -> None:
        self.ids = ids
        self._known = known
        self._entries: dict[str, Entry] | None = None
        self.key_accepted = key_accepted
        """The verdict of the latest round that got answers, finished in time or not; None if
        no round has sent a request yet."""
        self.version = version
        """`JobCache.version` when the refresh ended: what a rendering of it is keyed on."""

    @property
    def entries(self) -> dict[str, Entry]:
        """The known entries of `ids`, as they stand when first asked for."""
        if self._entries is None:
            known = self._known
            self._entries = {i: e for i in self.ids if (e := known.get(i)) is not None}
        return self._entries


Outcome = tuple[Entry, Attempt | None]
"""What a fetch left in the cache, and what it learned of Cerby (None: no request was sent)."""


@dataclass(frozen=True, slots=True)
class Queued:
    """A fetch waiting for a worker; `pending` is what the refreshes that want it wait for."""

    job_id: str
    deadline: float
    round_id: int
    pending: asyncio.Future[Outcome]


@dataclass(frozen=True, slots=True)
class _AllFresh:
    """Every job of `ids` stays fresh until the clock reaches `until`, unless data is stored."""

    ids: tuple[str, ...]
    version: int
    until: float


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
        self.on_stored: Callable[[str, Entry], None] | None = None
        """Told of every job newly fetched: the state file keeps it for the next start."""
        self._policy = policy
        self._metrics = metrics
        self._gate = gate
        self._clock = clock
        self._wall = wall_clock
        # Room for every tracked job plus as many probed ones.
        self._known: LRUCache[str, Entry] = LRUCache(maxsize=2 * max_jobs)
        self._inflight: dict[str, asyncio.Future[Outcome]] = {}
        """Single-flight: the one pending fetch of each job, which every refresh waits for."""
        self._queue: deque[Queued] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._max_workers = max_concurrency
        self._checks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._unknown_statuses: set[str] = set()
        self._round = 0
        self._verdicts: dict[int, bool] = {}
        self._closed = False
        self._expiries: dict[str, float] = {}
        """When each job falls due (monotonic): fresh before, and kept after so that the next
        due time follows the schedule (`next_due`)."""
        self._all_fresh: _AllFresh | None = None
        self._failing: dict[str, str] = {}
        """Jobs whose latest fetch failed, and why: what the failure log lines summarise."""
        self._logged_kinds: frozenset[str] = frozenset()
        self.version = 0
        """Incremented whenever any entry changes: renderers key their caches on it."""

    def _schedule(self, job_id: str, entry: Entry) -> None:
        """The job is fresh from now until it next falls due."""
        self._expiries[job_id] = next_due(
            self._expiries.get(job_id), self._policy.seconds(entry), self._clock()
        )

    def _fresh_until(self, job_id: str, now: float) -> float | None:
        """When the job falls due, if it is fresh: not yet due, and its data still held (not
        evicted from `_known`); None if it is due."""
        due = self._expiries.get(job_id, NEVER_DUE)
        return due if now < due and job_id in self._known else None

    def stop_waiting(self) -> None:
        """From now on no refresh waits for Cerby: a scrape in flight answers with what is
        cached (the exporter is stopping), and no new fetch starts."""
        self._closed = True
        self._stopping.set()

    async def close(self) -> None:
        self.stop_waiting()
        tasks = [*self._workers, *self._checks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pending in self._inflight.values():
            pending.cancel()
        self._inflight.clear()
        self._queue.clear()

    def restore(self, job_id: str, job: Job, fetched_at: float) -> None:
        """Data from the state file, fetched before a restart: fresh for what is left of its
        TTL (no fetch storm at every rollout), otherwise shown until the next scrape refreshes
        it."""
        entry = Entry(job, fetched_at, None)
        self._known[job_id] = entry
        due = self._clock() - (self._wall() - fetched_at) + self._policy.seconds(entry)
        if due > self._clock():
            self._expiries[job_id] = due
        self.version += 1

    def forget(self, job_id: str) -> None:
        """Drop everything known of a job that is no longer tracked."""
        self._known.pop(job_id, None)
        self._failing.pop(job_id, None)
        self._expiries.pop(job_id, None)
        self.version += 1

    def terminal(self, job_id: str) -> bool:
        """Whether the job's last known data says it is finished or failed."""
        entry = self._known.get(job_id)
        return entry is not None and entry.job is not None and entry.job.is_terminal

    def peek(self, job_ids: Iterable[str]) -> dict[str, Entry]:
        """What is known now, without fetching anything."""
        return {i: e for i in job_ids if (e := self._known.get(i)) is not None}

    async def refresh(self, job_ids: Iterable[str], deadline: float) -> Round:
        """Bring expired jobs up to date, waiting for fetches until the (monotonic) deadline."""
        ids = tuple(job_ids)
        fresh = self._all_fresh
        if (
            fresh is not None
            and fresh.version == self.version
            and (fresh.ids is ids or fresh.ids == ids)
            and self._clock() < fresh.until
        ):
            self._metrics.count_cache(len(ids), 0, 0)
            return Round(ids, self._known, self.key_verdict(), fresh.version)
        counts: Counter[str] = Counter()
        waiting: list[asyncio.Future[Outcome]] = []
        backed_off = self._gate.closed()
        until = float("inf")
        round_id = self._round + 1
        now = self._clock()
        for job_id in ids:
            due = self._fresh_until(job_id, now)
            if due is not None:
                counts["hit"] += 1
                until = min(until, due)
                continue
            known = self._known.get(job_id)
            counts["stale" if known is not None and known.job is not None else "miss"] += 1
            pending = self._inflight.get(job_id)
            if pending is None:
                if backed_off or self._closed:
                    continue
                pending = self._start_fetch(job_id, deadline, round_id)
                self._round = round_id
            waiting.append(pending)
        self._metrics.count_cache(counts["hit"], counts["miss"], counts["stale"])
        if counts["hit"] == len(ids):
            self._all_fresh = _AllFresh(ids, self.version, until)
            return Round(ids, self._known, self.key_verdict(), self.version)
        if waiting:
            await self._wait(waiting, deadline)
        self._log_failures()
        return Round(ids, self._known, self.key_verdict(), self.version)

    def fetch_soon(self, job_id: str) -> None:
        """Start fetching a job now, without waiting for it: for a job just heard of."""
        fresh = self._fresh_until(job_id, self._clock()) is not None
        if fresh or job_id in self._inflight or self._closed:
            return
        if self._gate.closed():
            return
        self._round += 1
        self._start_fetch(job_id, self._clock() + self._policy.in_flight, self._round)

    def _start_fetch(self, job_id: str, deadline: float, round_id: int) -> asyncio.Future[Outcome]:
        """Queue a fetch, for at most `max_concurrency` workers: a round of 10 000 due jobs is
        10 000 small futures in a queue, not 10 000 suspended tasks and their frames."""
        pending: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._inflight[job_id] = pending
        self._queue.append(Queued(job_id, deadline, round_id, pending))
        if len(self._workers) < self._max_workers:
            worker = asyncio.create_task(self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return pending

    async def _work(self) -> None:
        """Fetch queued jobs, oldest first, until none is left."""
        while self._queue:
            queued = self._queue.popleft()
            outcome = await self._fetch(queued.job_id, queued.deadline, queued.round_id)
            if not queued.pending.done():
                queued.pending.set_result(outcome)

    async def _wait(self, futures: Sequence[asyncio.Future[Any]], deadline: float) -> None:
        """Until every future is done, the deadline passes or the exporter stops. The fetches
        themselves are never cancelled here: what they bring back serves the next scrape.

        One countdown for all of them rather than `asyncio.wait`, which would hold a set of a
        round's thousands of futures and a copy of the context for each one's callback."""
        left = sum(not future.done() for future in futures)
        if left == 0 or self._stopping.is_set():
            return
        everything: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def one_done(_: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0 and not everything.done():
                everything.set_result(None)

        context = contextvars.copy_context()
        for future in futures:
            if not future.done():
                future.add_done_callback(one_done, context=context)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                (everything, stop),
                timeout=max(0.0, deadline - self._clock()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()
            if not everything.done():
                for future in futures:
                    future.remove_done_callback(one_done)

    def key_verdict(self) -> bool | None:
        """Did the latest round with answers reach Cerby with an accepted key?

        A round is the set of fetches one refresh started; its verdict is True if any of them
        got an answer taking our key, so one job's 5xx does not flip it while others succeed.
        """
        return self._verdicts[max(self._verdicts)] if self._verdicts else None

    async def check_key(
        self, check: Callable[[float], Awaitable[bool | None]], deadline: float
    ) -> None:
        """Run a key check as a round of its own, waiting for it until the deadline."""
        if self._inflight or self._checks or self._closed:
            return  # rounds under way will give a verdict
        self._round += 1
        task = asyncio.create_task(self._run_check(check, deadline, self._round))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        await self._wait([task], deadline)

    async def _run_check(
        self, check: Callable[[float], Awaitable[bool | None]], deadline: float, round_id: int
    ) -> None:
        verdict = await check(deadline)
        if verdict is not None:
            self._record_verdict(round_id, verdict)

    def _record_verdict(self, round_id: int, accepted: bool) -> None:
        self._verdicts[round_id] = self._verdicts.get(round_id, False) or accepted
        for old in [r for r in self._verdicts if r < round_id - 8]:
            del self._verdicts[old]

    async def _fetch(self, job_id: str, deadline: float, round_id: int) -> Outcome:
        """Fetch, store, and release the single-flight slot, all or nothing."""
        attempt: Attempt | None = None
        result: Job | FetchError | None
        try:
            result, attempt = await self._fetcher.fetch_job(job_id, deadline)
        except BackedOff:
            result = None
        except asyncio.CancelledError:
            pending = self._inflight.pop(job_id, None)
            if pending is not None:
                pending.cancel()
            raise
        except Exception as exc:  # a bug must not wedge the job's single-flight slot
            log.error("unexpected error fetching job %s: %s", job_id, type(exc).__name__)
            result = FetchError("transport", type(exc).__name__)
        entry = self._store(job_id, result)
        self._inflight.pop(job_id, None)
        if attempt is not None and attempt.requests > 0:
            self._record_verdict(round_id, bool(attempt.key_accepted))
        return entry, attempt

    def _store(self, job_id: str, result: Job | FetchError | None) -> Entry:
        previous = self._known.get(job_id) or Entry(None, None, None)
        if result is None:
            return previous
        if isinstance(result, FetchError):
            self._metrics.count_fetch_error(result.reason)
            entry = replace(previous, error=result.reason)
            self._failing[job_id] = result.reason
        else:
            self._failing.pop(job_id, None)
            self._note_status(result)
            # The same answer again keeps the job already held, so the object parsed from it is
            # freed at once with the round's other short-lived ones instead of replacing a
            # long-lived one: memory freed in a round can then be reused by the next one.
            job = previous.job if previous.job == result else result
            entry = Entry(job, self._wall(), None)
            if self.on_stored is not None:
                self.on_stored(job_id, entry)
        self._known[job_id] = entry
        self._schedule(job_id, entry)
        self.version += 1
        if len(self._expiries) > 2 * self._known.maxsize:
            self._expiries = {i: t for i, t in self._expiries.items() if i in self._known}
        return entry

    def _note_status(self, job: Job) -> None:
        raw = job.raw_status
        if job.status == "unknown" and raw is not None and raw not in self._unknown_statuses:
            self._unknown_statuses.add(raw)
            log.warning("job %s has a status Cerby does not document: %.40r", job.id, raw)

    def _log_failures(self) -> None:
        """A failure that goes on is logged when it starts, when it changes (another reason
        appears or one ends) and when it ends, never once a round.

        A refused key and a 429 are not repeated here at warning level: the client logs each
        once when it starts (and the key again when it is accepted).
        """
        reasons = Counter(self._failing.values())
        kinds = frozenset(reasons)
        if kinds == self._logged_kinds:
            return
        self._logged_kinds = kinds
        if not kinds:
            log.info("job fetches no longer failing")
            return
        summary = " ".join(f"{reason}={n}" for reason, n in sorted(reasons.items()))
        quiet = kinds <= LOGGED_BY_CLIENT
        log.log(logging.DEBUG if quiet else logging.WARNING, "job fetches failing: %s", summary)
