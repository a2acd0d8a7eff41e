"""The cache: lifetimes by state, expiry on an injected clock, single-flight, bounded waits.

Each test runs its scenario on one event loop, as the exporter does. The fake Cerby can hold
its answers until a test releases them, so a test sees fetches in flight; it never has to
measure how long anything took.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import Entry, JobCache, TTLPolicy, next_due
from cerby_exporter.client import Attempt, BackedOff, FetchError
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import Job
from tests.support import Clock

A = "aaaaaaaa-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"
POLICY = TTLPolicy(in_flight=60, terminal=3600)
FAR = 1e9
"""Seconds added to the clock for a deadline that never comes."""


def job(job_id: str, status: str) -> Job:
    return Job(
        job_id, status, "setup_mfa", "manual", "twitter", None, None, None, None,
        True, None, None, None, None,
    )  # fmt: skip


class FakeCerby:
    """Answers from a table; counts calls; holds every answer while `release` is clear."""

    def __init__(self) -> None:
        self.status = {A: "running", B: "finished"}
        self.fail: dict[str, str] = {}
        """Job -> failure reason to answer instead of the job."""
        self.calls: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.release.set()
        self.concurrent = 0
        self.most_concurrent = 0

    def fail_all(self, reason: str | None) -> None:
        self.fail = {} if reason is None else dict.fromkeys(self.status, reason)

    async def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]:
        self.calls[job_id] += 1
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            await self.release.wait()
            reason = self.fail.get(job_id)
            if reason is not None:
                accepted = reason in ("not_found", "rate_limited", "invalid_response")
                return FetchError(reason, "injected"), Attempt(1, accepted)
            return job(job_id, self.status[job_id]), Attempt(1, True)
        finally:
            self.concurrent -= 1


def make(
    cerby: FakeCerby,
    clock: Clock,
    *,
    metrics: ExporterMetrics | None = None,
    gate: RateLimitGate | None = None,
    concurrency: int = 4,
) -> JobCache:
    return JobCache(
        cerby,
        POLICY,
        metrics or ExporterMetrics(),
        gate or RateLimitGate(clock),
        max_jobs=100,
        max_concurrency=concurrency,
        clock=clock,
        wall_clock=clock,
    )


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds: fetch tasks start on the loop's next turns."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the condition never held")


async def turns(count: int = 20) -> None:
    """Let every task that can run do so, `count` times over."""
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("status", "ok", "ttl"),
    [
        ("created", True, 60),
        ("started", True, 60),
        ("running", True, 60),
        ("retrying", True, 60),
        ("paused", True, 60),
        ("finished", True, 3600),
        ("error", True, 3600),
        ("finished", False, 60),
        ("error", False, 60),
    ],
)
def test_ttl_by_state(status: str, ok: bool, ttl: float) -> None:
    entry = Entry(job(A, status), 0.0, None if ok else "timeout")
    assert POLICY.seconds(entry) == ttl


def test_no_data_yet_gets_the_short_ttl() -> None:
    assert POLICY.seconds(Entry(None, None, "not_found")) == 60


def test_expiry_follows_the_state_on_an_injected_clock() -> None:
    async def scenario() -> None:
        cerby, clock, metrics = FakeCerby(), Clock(), ExporterMetrics()
        cache = make(cerby, clock, metrics=metrics)
        first = await cache.refresh([A, B], deadline=clock() + 5)
        assert first.entries[A].job == job(A, "running")
        assert first.key_accepted is True
        assert cerby.calls == {A: 1, B: 1}
        clock.now += 59.9
        again = await cache.refresh([A, B], clock() + 5)
        assert again.key_accepted is True  # the last verdict stands
        assert again.entries == first.entries
        assert cerby.calls == {A: 1, B: 1}
        clock.now += 0.2  # the running job's minute is up; the finished one has an hour
        await cache.refresh([A, B], clock() + 5)
        assert cerby.calls == {A: 2, B: 1}
        clock.now += 3600
        await cache.refresh([A, B], clock() + 5)
        assert cerby.calls == {A: 3, B: 2}
        assert metrics.cache_results() == {"hit": 3, "miss": 2, "stale": 3}
        await cache.close()

    asyncio.run(scenario())


def test_a_job_that_turns_terminal_gets_the_long_ttl() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        await cache.refresh([A], clock() + 5)
        cerby.status[A] = "error"
        clock.now += 61
        await cache.refresh([A], clock() + 5)
        assert cache.terminal(A)
        clock.now += 61 * 10
        await cache.refresh([A], clock() + 5)
        assert cerby.calls[A] == 2
        await cache.close()

    asyncio.run(scenario())


def test_failed_refresh_keeps_last_good_data_and_says_so() -> None:
    async def scenario() -> None:
        cerby, clock, metrics = FakeCerby(), Clock(1000.0), ExporterMetrics()
        cache = make(cerby, clock, metrics=metrics)
        await cache.refresh([A], clock() + 5)
        good = cache.peek([A])[A]
        cerby.fail_all("server_error")
        clock.now += 61
        entry = (await cache.refresh([A], clock() + 5)).entries[A]
        assert entry.job == good.job
        assert entry.fetched_at == good.fetched_at == 1000.0
        assert entry.error == "server_error"
        assert not entry.ok
        assert metrics.fetch_errors()["server_error"] == 1
        # The failure is remembered for the short TTL, not retried on every scrape.
        clock.now += 30
        await cache.refresh([A], clock() + 5)
        assert cerby.calls[A] == 2
        cerby.fail_all(None)
        clock.now += 31
        recovered = (await cache.refresh([A], clock() + 5)).entries[A]
        assert recovered.ok
        assert recovered.fetched_at == clock.now
        await cache.close()

    asyncio.run(scenario())


def test_an_unexpected_error_in_a_fetch_frees_the_job_for_the_next_one() -> None:
    class Buggy(FakeCerby):
        async def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]:
            if not self.calls:
                self.calls[job_id] += 1
                raise RuntimeError("a bug")
            return await super().fetch_job(job_id, deadline)

    async def scenario() -> None:
        cerby, clock = Buggy(), Clock()
        cache = make(cerby, clock)
        assert (await cache.refresh([A], clock() + 5)).entries[A] == Entry(None, None, "transport")
        clock.now += 61
        assert (await cache.refresh([A], clock() + 5)).entries[A].job == job(A, "running")
        assert cerby.calls[A] == 2
        await cache.close()

    asyncio.run(scenario())


def test_verdict_of_a_round_is_any_accepted_answer() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        cerby.fail_all("server_error")  # answers from Cerby itself, yet no key accepted
        assert (await cache.refresh([A], clock() + 5)).key_accepted is False
        cerby.fail = {A: "server_error"}  # one job's 5xx does not outvote another's success
        clock.now += 61
        assert (await cache.refresh([A, B], clock() + 5)).key_accepted is True
        await cache.close()

    asyncio.run(scenario())


def test_a_rejected_key_is_a_false_verdict() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cerby.fail_all("unauthorized")
        cache = make(cerby, clock)
        result = await cache.refresh([A, B], clock() + 5)
        assert result.key_accepted is False
        assert result.entries[A] == Entry(None, None, "unauthorized")
        await cache.close()

    asyncio.run(scenario())


def test_key_check_runs_as_a_round_and_is_bounded() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        checks: list[str] = []

        async def unanswered(_deadline: float) -> bool | None:
            checks.append("unanswered")
            return None

        async def refused(_deadline: float) -> bool | None:
            checks.append("refused")
            return False

        answer = asyncio.Event()

        async def slow(_deadline: float) -> bool | None:
            checks.append("slow")
            await answer.wait()
            return True

        await cache.check_key(unanswered, deadline=clock() + 5)
        assert cache.key_verdict() is None  # no answer, no verdict
        await cache.check_key(refused, deadline=clock() + 5)
        assert cache.key_verdict() is False
        # The check outlives its deadline: the caller goes on, the verdict comes in later.
        await asyncio.wait_for(cache.check_key(slow, deadline=clock() + 0.1), 10)
        assert cache.key_verdict() is False
        await cache.check_key(refused, deadline=clock() + 5)  # one under way: none started
        assert checks == ["unanswered", "refused", "slow"]
        answer.set()
        await until(lambda: cache.key_verdict() is True)
        await cache.close()

    asyncio.run(scenario())


def test_no_key_check_while_fetches_are_in_flight() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        cerby.release.clear()
        cache.fetch_soon(A)
        await until(lambda: cerby.concurrent == 1)
        checks: list[float] = []

        async def check(deadline: float) -> bool | None:
            checks.append(deadline)
            return False

        await cache.check_key(check, deadline=clock() + 5)
        assert checks == []  # the fetch under way gives the verdict
        cerby.release.set()
        await until(lambda: cache.key_verdict() is True)
        await cache.close()

    asyncio.run(scenario())


def test_single_flight_under_concurrent_scrapes() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock, concurrency=8)
        cerby.release.clear()
        scrapes = [asyncio.create_task(cache.refresh([A, B], clock() + FAR)) for _ in range(8)]
        await until(lambda: cerby.concurrent == 2)
        await turns()  # every scrape has found the fetches in flight
        assert not any(scrape.done() for scrape in scrapes)
        cerby.release.set()
        results = await asyncio.gather(*scrapes)
        assert cerby.calls == {A: 1, B: 1}
        assert all(r.entries == results[0].entries for r in results)
        assert results[0].entries[A].job == job(A, "running")
        assert results[0].entries[B].job == job(B, "finished")
        await cache.close()

    asyncio.run(scenario())


def test_fetches_run_in_parallel_up_to_the_limit() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        ids = [f"aaaaaaaa-0000-0000-0000-{n:012d}" for n in range(12)]
        cerby.status = dict.fromkeys(ids, "running")
        cache = make(cerby, clock, concurrency=3)
        cerby.release.clear()
        scrape = asyncio.create_task(cache.refresh(ids, clock() + FAR))
        await until(lambda: cerby.concurrent == 3)
        await turns()
        assert cerby.concurrent == 3  # the other nine wait for a slot, unsent
        assert sum(cerby.calls.values()) == 3
        # ...queued, not as tasks: three workers, beside this test, the scrape and its wait for
        # the exporter to stop.
        assert len(asyncio.all_tasks()) == 3 + 3
        cerby.release.set()
        result = await scrape
        assert cerby.most_concurrent == 3
        assert sum(cerby.calls.values()) == 12
        assert set(result.entries) == set(ids)
        await cache.close()

    asyncio.run(scenario())


def test_refresh_returns_at_the_deadline_and_the_fetch_completes_later() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        await cache.refresh([A], clock() + 5)
        cerby.status[A] = "finished"
        cerby.release.clear()
        clock.now += 61
        # The deadline is on the cache's clock, which stands still: 0.1 s of real waiting.
        result = await asyncio.wait_for(cache.refresh([A], deadline=clock() + 0.1), 10)
        assert cerby.concurrent == 1  # the fetch is still out
        assert result.entries[A].job == job(A, "running")  # the cached data, served in time
        cerby.release.set()
        await until(lambda: cache.peek([A])[A].job == job(A, "finished"))
        assert cerby.calls[A] == 2
        await cache.close()

    asyncio.run(scenario())


def test_refreshes_that_stop_waiting_leave_nothing_on_the_fetch_they_waited_for() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        cerby.release.clear()
        for _ in range(5):
            await cache.refresh([A, A, B], deadline=clock() + 0.02)
        pending = cache._inflight[A]
        assert not pending.done()
        assert not pending._callbacks  # asyncio keeps the done callbacks here
        cerby.release.set()
        both = await cache.refresh([A, A, B], deadline=clock() + FAR)  # A twice: counted once
        assert set(both.entries) == {A, B}
        assert cerby.calls == {A: 1, B: 1}
        await cache.close()

    asyncio.run(scenario())


def test_a_verdict_that_arrives_late_counts() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        await cache.refresh([A], clock() + 5)
        cerby.fail = {A: "unauthorized"}
        cerby.release.clear()
        clock.now += 61
        late = await asyncio.wait_for(cache.refresh([A], deadline=clock() + 0.1), 10)
        assert late.key_accepted is True  # the round before's, until this one has answers
        cerby.release.set()
        await until(lambda: not cache.peek([A])[A].ok)
        assert cache.key_verdict() is False
        await cache.close()

    asyncio.run(scenario())


def test_a_refresh_waits_for_a_fetch_that_ends_before_the_deadline() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        cerby.release.clear()
        asyncio.get_running_loop().call_later(0.05, cerby.release.set)
        result = await cache.refresh([A], deadline=clock() + FAR)
        assert result.entries[A].job == job(A, "running")
        await cache.close()

    asyncio.run(scenario())


def test_stop_waiting_answers_a_waiting_refresh_at_once_from_the_cache() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        await cache.refresh([A], clock() + 5)
        cerby.status[A] = "finished"
        cerby.release.clear()
        clock.now += 61
        scrape = asyncio.create_task(cache.refresh([A], deadline=clock() + FAR))
        await until(lambda: cerby.concurrent == 1)
        await turns()
        assert not scrape.done()
        cache.stop_waiting()
        result = await asyncio.wait_for(scrape, 10)
        assert result.entries[A].job == job(A, "running")
        # From now on nothing waits and nothing new is fetched.
        later = await asyncio.wait_for(cache.refresh([A, B], deadline=clock() + FAR), 10)
        assert set(later.entries) == {A}
        cache.fetch_soon(B)
        await turns()
        assert cerby.calls == {A: 2}
        # Closing cancels the fetch still out: nothing is stored from it.
        await asyncio.wait_for(cache.close(), 10)
        assert cerby.concurrent == 0
        assert cache.peek([A])[A].job == job(A, "running")

    asyncio.run(scenario())


def test_fetch_soon_starts_a_fetch_without_waiting_for_it() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        gate = RateLimitGate(clock)
        cache = make(cerby, clock, gate=gate)
        cerby.release.clear()
        cache.fetch_soon(A)
        assert cerby.calls == {}  # started as a task: it runs once the caller yields
        await until(lambda: cerby.concurrent == 1)
        cache.fetch_soon(A)  # in flight: nothing more
        scrape = asyncio.create_task(cache.refresh([A], clock() + FAR))  # waits for the same
        await turns()
        assert cerby.calls == {A: 1}
        cerby.release.set()
        assert (await scrape).entries[A].job == job(A, "running")
        assert cerby.calls == {A: 1}
        cache.fetch_soon(A)  # fresh: nothing to do
        gate.trip(300)
        cache.fetch_soon(B)  # backed off: nothing goes out
        await turns()
        assert cerby.calls == {A: 1}
        assert cache.peek([B]) == {}
        await cache.close()

    asyncio.run(scenario())


def test_no_fetch_while_backed_off() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        gate = RateLimitGate(clock)
        cache = make(cerby, clock, gate=gate)
        await cache.refresh([A], clock() + 5)
        gate.trip(300)
        clock.now += 120
        result = await cache.refresh([A, B], clock() + 5)
        assert cerby.calls == {A: 1}
        assert result.key_accepted is True  # from the round before the back-off
        assert set(result.entries) == {A}
        clock.now += 181
        await cache.refresh([A, B], clock() + 5)
        assert cerby.calls == {A: 2, B: 1}
        await cache.close()

    asyncio.run(scenario())


def test_a_fetch_that_meets_the_gate_changes_nothing() -> None:
    class Gated(FakeCerby):
        async def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]:
            raise BackedOff

    async def scenario() -> None:
        cache = make(Gated(), Clock())
        result = await cache.refresh([A], FAR)
        assert result.entries == {}
        assert result.key_accepted is None
        assert cache.version == 0
        await cache.close()

    asyncio.run(scenario())


def test_version_moves_only_when_data_is_stored() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        assert cache.version == 0
        first = await cache.refresh([A, B], clock() + 5)
        assert cache.version == first.version == 2
        again = await cache.refresh([A, B], clock() + 5)
        assert cache.version == again.version == 2
        cerby.fail_all("timeout")
        clock.now += 61
        failed = await cache.refresh([A, B], clock() + 5)  # a failure is stored too
        assert cache.version == failed.version == 3
        await cache.close()

    asyncio.run(scenario())


def test_the_same_answer_again_keeps_the_job_held_with_a_new_fetch_time() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        first = (await cache.refresh([A], clock() + 5)).entries[A]
        clock.now += 61
        same = (await cache.refresh([A], clock() + 5)).entries[A]
        assert same.job is first.job
        assert (first.fetched_at, same.fetched_at) == (clock.now - 61, clock.now)
        cerby.status[A] = "error"
        clock.now += 61
        changed = (await cache.refresh([A], clock() + 5)).entries[A]
        assert changed.job == job(A, "error")
        assert changed.job is not first.job
        assert cerby.calls[A] == 3
        await cache.close()

    asyncio.run(scenario())


def test_restored_data_is_fresh_for_what_is_left_of_its_ttl() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        cache.restore(A, job(A, "running"), fetched_at=clock() - 30)
        cache.restore(B, job(B, "running"), fetched_at=clock() - 120)
        cerby.status[B] = "running"
        assert cache.version == 2
        result = await cache.refresh([A, B], clock() + 5)
        assert cerby.calls == {B: 1}  # only the one whose TTL ran out before the restart
        assert result.entries[A] == Entry(job(A, "running"), 970.0, None)
        clock.now += 29.9
        await cache.refresh([A], clock() + 5)
        assert cerby.calls == {B: 1}
        clock.now += 0.2
        await cache.refresh([A], clock() + 5)
        assert cerby.calls == {A: 1, B: 1}
        await cache.close()

    asyncio.run(scenario())


def test_forget_drops_a_job_and_moves_the_version() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        await cache.refresh([A, B], clock() + 5)
        version = cache.version
        cache.forget(A)
        assert cache.version == version + 1
        assert set(cache.peek([A, B])) == {B}
        assert not cache.terminal(A)
        await cache.refresh([A, B], clock() + 5)  # tracked again: fetched anew
        assert cerby.calls == {A: 2, B: 1}
        await cache.close()

    asyncio.run(scenario())


def test_a_job_whose_data_was_evicted_is_fetched_again_not_taken_for_fresh() -> None:
    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)  # room for 200 jobs
        ids = [f"aaaaaaaa-0000-0000-0000-{n:012d}" for n in range(201)]
        for job_id in ids:
            cerby.status[job_id] = "running"
        await cache.refresh(ids, clock() + 5)
        assert set(cache.peek(ids)) == set(ids[1:])  # the least recently used one went
        result = await cache.refresh(ids[:1], clock() + 5)
        assert cerby.calls[ids[0]] == 2
        assert result.entries[ids[0]] == Entry(job(ids[0], "running"), clock(), None)
        await cache.close()

    asyncio.run(scenario())


def test_entry_ok_reflects_error() -> None:
    entry = Entry(job(A, "running"), 1.0, None)
    assert entry.ok
    assert not replace(entry, error="timeout").ok


@pytest.mark.parametrize(
    ("previous", "ttl", "now", "due"),
    [
        (None, 60.0, 1000.0, 1060.0),  # first fetch
        (1000.0, 60.0, 1000.0, 1060.0),  # fetched right when due
        (1000.0, 60.0, 1014.0, 1060.0),  # fetched 14 s late: the schedule holds
        (1000.0, 60.0, 1059.9, 1060.0),
        (1000.0, 60.0, 1060.0, 1120.0),  # a whole period missed: start again from now
        (1000.0, 60.0, 1500.0, 1560.0),
        (1000.0, 3600.0, 1030.0, 4600.0),  # turned terminal: the next period is the long one
    ],
)
def test_next_due_keeps_the_schedule(
    previous: float | None, ttl: float, now: float, due: float
) -> None:
    assert next_due(previous, ttl, now) == due


def test_late_scrapes_do_not_stretch_the_refresh_period() -> None:
    """Scrapes every 15.4 s with a 60 s TTL: over an hour, exactly one fetch per TTL (a period
    counted from each fetch would make 59)."""

    async def scenario() -> None:
        cerby, clock = FakeCerby(), Clock()
        cache = make(cerby, clock)
        start = clock.now
        while clock.now < start + 3600:
            await cache.refresh([A], clock() + 5)
            clock.now += 15.0 + 0.4  # a scrape interval that drifts
        assert cerby.calls[A] == 60
        await cache.close()

    asyncio.run(scenario())
