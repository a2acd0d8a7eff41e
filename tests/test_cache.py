"""The cache: lifetimes by state, expiry on an injected clock, single-flight, bounded waits."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace

import pytest

from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import Entry, JobCache, TTLPolicy, next_due
from cerby_exporter.client import Attempt, BackedOff, FetchError
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import Job

A = "aaaaaaaa-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"
POLICY = TTLPolicy(in_flight=60, terminal=3600)


def job(job_id: str, status: str) -> Job:
    return Job(
        job_id, status, "setup_mfa", "manual", "twitter", None, None, None, None,
        True, None, None, None, None,
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCerby:
    """Answers from a table; counts calls; can hold calls until released."""

    def __init__(self) -> None:
        self.status = {A: "running", B: "finished"}
        self.fail: str | None = None
        self.calls: Counter[str] = Counter()
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()
        self.concurrent = 0
        self.most_concurrent = 0

    def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]:
        with self.lock:
            self.calls[job_id] += 1
            self.concurrent += 1
            self.most_concurrent = max(self.most_concurrent, self.concurrent)
        try:
            self.release.wait(10)
            if self.fail is not None:
                accepted = self.fail in ("not_found", "rate_limited", "invalid_response")
                return FetchError(self.fail, "injected"), Attempt(1, accepted)
            return job(job_id, self.status[job_id]), Attempt(1, True)
        finally:
            with self.lock:
                self.concurrent -= 1


def make(
    cerby: FakeCerby, clock: Clock, metrics: ExporterMetrics | None = None, concurrency: int = 4
) -> JobCache:
    return JobCache(
        cerby,
        POLICY,
        metrics or ExporterMetrics(),
        RateLimitGate(clock),
        max_jobs=100,
        max_concurrency=concurrency,
        clock=clock,
        wall_clock=clock,
    )


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
    cerby, clock, metrics = FakeCerby(), Clock(), ExporterMetrics()
    cache = make(cerby, clock, metrics)
    first = cache.refresh([A, B], deadline=clock() + 5)
    assert first.entries[A].job == job(A, "running")
    assert first.key_accepted is True
    assert cerby.calls == {A: 1, B: 1}
    clock.now += 59.9
    assert cache.refresh([A, B], clock() + 5).key_accepted is True  # the last verdict stands
    assert cerby.calls == {A: 1, B: 1}
    clock.now += 0.2  # the running job's minute is up; the finished one has an hour
    cache.refresh([A, B], clock() + 5)
    assert cerby.calls == {A: 2, B: 1}
    clock.now += 3600
    cache.refresh([A, B], clock() + 5)
    assert cerby.calls == {A: 3, B: 2}
    assert metrics.cache_results() == {"hit": 3, "miss": 2, "stale": 3}


def test_a_job_that_turns_terminal_gets_the_long_ttl() -> None:
    cerby, clock = FakeCerby(), Clock()
    cache = make(cerby, clock)
    cache.refresh([A], clock() + 5)
    cerby.status[A] = "error"
    clock.now += 61
    cache.refresh([A], clock() + 5)
    clock.now += 61 * 10
    cache.refresh([A], clock() + 5)
    assert cerby.calls[A] == 2


def test_failed_refresh_keeps_last_good_data_and_says_so() -> None:
    cerby, clock, metrics = FakeCerby(), Clock(), ExporterMetrics()
    cache = make(cerby, clock, metrics)
    cache.refresh([A], clock() + 5)
    good = cache.peek([A])[A]
    cerby.fail = "server_error"
    clock.now += 61
    entry = cache.refresh([A], clock() + 5).entries[A]
    assert entry.job == good.job
    assert entry.fetched_at == good.fetched_at == 1000.0
    assert entry.error == "server_error"
    assert not entry.ok
    assert metrics.fetch_errors()["server_error"] == 1
    # The failure is remembered for the short TTL, not retried on every scrape.
    clock.now += 30
    cache.refresh([A], clock() + 5)
    assert cerby.calls[A] == 2
    cerby.fail = None
    clock.now += 31
    recovered = cache.refresh([A], clock() + 5).entries[A]
    assert recovered.ok
    assert recovered.fetched_at == clock.now


def test_verdict_of_a_round_is_any_accepted_answer() -> None:
    cerby, clock = FakeCerby(), Clock()
    cache = make(cerby, clock)
    cerby.fail = "server_error"  # answers from Cerby itself, yet no key accepted
    assert cache.refresh([A], clock() + 5).key_accepted is False
    cerby.fail = None
    clock.now += 61
    assert cache.refresh([A, B], clock() + 5).key_accepted is True


def test_key_check_runs_as_a_round_and_is_bounded() -> None:
    cache = make(FakeCerby(), Clock())
    assert cache.key_verdict() is None
    cache.check_key(lambda _deadline: False, deadline=1e9)
    assert cache.key_verdict() is False
    started = time.monotonic()

    def slow(_deadline: float) -> bool:
        time.sleep(2)
        return True

    cache.check_key(slow, deadline=Clock()() + 0.2)
    assert time.monotonic() - started < 1.5


def test_a_rejected_key_is_a_false_verdict() -> None:
    cerby, clock = FakeCerby(), Clock()
    cerby.fail = "unauthorized"
    result = make(cerby, clock).refresh([A, B], clock() + 5)
    assert result.key_accepted is False
    assert result.entries[A] == Entry(None, None, "unauthorized")


def test_single_flight_under_concurrent_scrapes() -> None:
    cerby, clock = FakeCerby(), Clock()
    cache = make(cerby, clock, concurrency=8)
    cerby.release.clear()
    results: list[dict[str, Entry]] = []
    start = threading.Barrier(9)

    def scrape() -> None:
        start.wait()
        results.append(cache.refresh([A, B], deadline=time.monotonic() + 1e9).entries)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(0.2)  # let every scrape find the fetches in flight
    cerby.release.set()
    for thread in threads:
        thread.join(10)
    assert cerby.calls == {A: 1, B: 1}
    assert len(results) == 8
    assert all(set(r) == {A, B} for r in results)


def test_fetches_run_in_parallel_up_to_the_limit() -> None:
    cerby, clock = FakeCerby(), Clock()
    ids = [f"aaaaaaaa-0000-0000-0000-{n:012d}" for n in range(12)]
    cerby.status = dict.fromkeys(ids, "running")
    cache = make(cerby, clock, concurrency=3)
    cerby.release.clear()
    threading.Timer(0.3, cerby.release.set).start()
    cache.refresh(ids, deadline=clock() + 1e9)
    assert cerby.most_concurrent == 3
    assert sum(cerby.calls.values()) == 12


def test_refresh_returns_at_the_deadline_and_the_fetch_completes_later() -> None:
    cerby, clock = FakeCerby(), Clock()
    cache = make(cerby, clock)
    cache.refresh([A], clock() + 5)
    cerby.status[A] = "finished"
    cerby.release.clear()
    clock.now += 61
    started = time.monotonic()
    result = cache.refresh([A], deadline=clock() + 0.3)  # waits on the real clock for 0.3 s
    waited = time.monotonic() - started
    assert 0.25 <= waited < 5
    assert result.entries[A].job == job(A, "running")  # the cached data, served in time
    cerby.release.set()
    for _ in range(250):
        if cache.peek([A])[A].job == job(A, "finished"):
            break
        time.sleep(0.02)
    assert cache.peek([A])[A].job == job(A, "finished")
    assert cerby.calls[A] == 2


def test_no_fetch_while_backed_off() -> None:
    cerby, clock = FakeCerby(), Clock()
    gate = RateLimitGate(clock)
    cache = JobCache(
        cerby, POLICY, ExporterMetrics(), gate, max_jobs=10, max_concurrency=2,
        clock=clock, wall_clock=clock,
    )  # fmt: skip
    cache.refresh([A], clock() + 5)
    gate.trip(300)
    clock.now += 120
    result = cache.refresh([A, B], clock() + 5)
    assert cerby.calls == {A: 1}
    assert result.key_accepted is True  # from the round before the back-off
    assert set(result.entries) == {A}
    clock.now += 181
    cache.refresh([A, B], clock() + 5)
    assert cerby.calls == {A: 2, B: 1}


def test_a_fetch_that_meets_the_gate_changes_nothing() -> None:
    class Gated(FakeCerby):
        def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]:
            raise BackedOff

    cache = make(Gated(), Clock())
    result = cache.refresh([A], 1e9)
    assert result.entries == {}
    assert result.key_accepted is None


def test_version_moves_only_when_data_is_stored() -> None:
    cerby, clock = FakeCerby(), Clock()
    cache = make(cerby, clock)
    assert cache.version == 0
    cache.refresh([A, B], clock() + 5)
    assert cache.version == 2
    cache.refresh([A, B], clock() + 5)
    assert cache.version == 2


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
    cerby, clock = FakeCerby(), Clock()
    cache = make(cerby, clock)
    start = clock.now
    while clock.now < start + 3600:
        cache.refresh([A], clock() + 5)
        clock.now += 15.0 + 0.4  # a scrape interval that drifts
    assert cerby.calls[A] == 60
