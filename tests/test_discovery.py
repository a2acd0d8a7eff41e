"""Learned jobs: retention and the cap, on an injected clock, with a real state file."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import JobCache, TTLPolicy
from cerby_exporter.client import Attempt, FetchError
from cerby_exporter.jobids import JobIdSource, Learned, cap_victim, retention_expired
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import Job, parse_job
from cerby_exporter.state import AsyncState, StateStore
from cerby_exporter.webhook import Discovery, WebhookMetrics
from tests.support import Clock

DAY = 86400.0
CONFIGURED = "00000000-0000-0000-0000-00000000000c"


def job_id(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


class Cerby:
    """Answers every job with the status it is told; counts the requests."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.requests: list[str] = []

    async def fetch_job(self, job: str, deadline: float) -> tuple[Job | FetchError, Attempt]:
        self.requests.append(job)
        document = {"data": {"attributes": {"status": self.status.get(job, "running")}}}
        return parse_job(document, job), Attempt(1, True)


class World:
    def __init__(self, tmp_path: Path, max_jobs: int = 100) -> None:
        self.clock = Clock(1_800_000_000.0)
        self.cerby = Cerby()
        self.source = JobIdSource((CONFIGURED,), None, max_jobs)
        self.cache = JobCache(
            self.cerby,
            TTLPolicy(60, 3600),
            ExporterMetrics(),
            RateLimitGate(self.clock),
            max_jobs=max_jobs,
            max_concurrency=4,
            wall_clock=self.clock,
        )
        self.path = tmp_path / "state.sqlite"
        self.state = AsyncState(StateStore.open(self.path))
        self.metrics = WebhookMetrics()
        self.discovery = Discovery(
            self.source, self.cache, self.state, self.metrics, retention=7 * DAY, clock=self.clock
        )
        self.cache.on_stored = self.discovery.save

    async def hear(self, job: str, status: str) -> None:
        """An event stored for `job`, then its fetch finished."""
        self.cerby.status[job] = status
        await self.state.record_event(f"event-{job}-{self.clock.now}", job, "x", self.clock.now)
        await self.discovery.heard(job, self.clock.now)
        await self.cache.refresh([job], asyncio.get_running_loop().time() + 5)
        await self.state.drain()

    async def close(self) -> None:
        await self.cache.close()
        await self.state.close()


def test_retention_expired_keeps_jobs_in_flight_and_recent_ones() -> None:
    learned = {
        "old-done": Learned(0, 0),
        "old-running": Learned(0, 0),
        "new-done": Learned(0, 6 * DAY),
    }
    terminal = {"old-done": True, "old-running": False, "new-done": True}.__getitem__
    assert retention_expired(learned, terminal, 7 * DAY + 1, 7 * DAY) == ["old-done"]
    assert retention_expired(learned, terminal, 7 * DAY, 7 * DAY) == []


def test_cap_victim_is_the_terminal_learned_job_heard_of_longest_ago() -> None:
    learned = {"a": Learned(0, 30), "b": Learned(0, 10), "c": Learned(0, 5), "d": Learned(0, 1)}
    terminal = {"a": True, "b": True, "c": False, "d": True}.__getitem__
    assert cap_victim(learned, configured={"d"}, terminal=terminal) == "b"
    assert cap_victim(learned, configured={"a", "b", "d"}, terminal=terminal) is None


def test_a_learned_terminal_job_is_forgotten_after_retention(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path)
        done, running = job_id(1), job_id(2)
        await world.hear(done, "finished")
        await world.hear(running, "running")
        world.clock.now += 7 * DAY - 1
        await world.discovery.sweep()
        assert world.source.current() == (CONFIGURED, done, running)
        world.clock.now += 2
        await world.discovery.sweep()
        assert world.source.current() == (CONFIGURED, running)
        assert world.metrics.forgotten["retention"] == 1
        assert world.cache.peek([done]) == {}
        snapshot = await world.state.load()
        assert set(snapshot.learned) == {running}
        assert set(snapshot.jobs) == {running}
        await world.close()

    asyncio.run(scenario())


def test_an_event_resets_the_retention_clock(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path)
        done = job_id(1)
        await world.hear(done, "finished")
        world.clock.now += 6 * DAY
        await world.hear(done, "finished")
        world.clock.now += 6 * DAY
        await world.discovery.sweep()
        assert done in world.source.current()
        await world.close()

    asyncio.run(scenario())


def test_at_the_cap_the_oldest_terminal_learned_job_makes_room(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, max_jobs=3)
        first, second, third = job_id(1), job_id(2), job_id(3)
        await world.hear(first, "finished")
        world.clock.now += 1
        await world.hear(second, "error")
        world.clock.now += 1
        await world.hear(third, "running")
        assert world.source.current() == (CONFIGURED, second, third)
        assert world.metrics.forgotten["cap"] == 1
        assert set((await world.state.load()).learned) == {second, third}
        await world.close()

    asyncio.run(scenario())


def test_when_nothing_can_go_the_job_is_not_tracked_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        world = World(tmp_path, max_jobs=2)
        await world.hear(job_id(1), "running")
        with caplog.at_level(logging.WARNING, "cerby_exporter.webhook"):
            await world.hear(job_id(2), "running")
            await world.hear(job_id(3), "running")
        assert world.source.current() == (CONFIGURED, job_id(1))
        assert world.metrics.dropped == 2
        assert caplog.text.count("--max-jobs reached") == 1
        snapshot = await world.state.load()
        assert set(snapshot.learned) == {job_id(1)}
        await world.close()

    asyncio.run(scenario())


def test_configured_jobs_are_never_forgotten(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path)
        await world.hear(CONFIGURED, "finished")
        world.clock.now += 30 * DAY
        await world.discovery.sweep()
        assert world.source.current() == (CONFIGURED,)
        assert world.cache.peek([CONFIGURED])[CONFIGURED].job is not None
        await world.close()

    asyncio.run(scenario())
