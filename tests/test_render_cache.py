"""The job part of the exposition: rendered once per change of data, compressed once, reused.

A rig wires the settings-free chain (client -> cache -> collector) to an in-memory Cerby
(httpx.MockTransport) and one injected clock, so time moves only when a test moves it; each test
drives it on one event loop. What goes over the wire (gzip, OpenMetrics) is checked against an
exporter serving the simulator on a loopback socket.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from cerby_exporter import collector as collector_module
from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import JobCache, TTLPolicy
from cerby_exporter.client import ApiKey, CerbyClient
from cerby_exporter.collector import Collector, HealthCollector, JobPart, View
from cerby_exporter.exposition import (
    DEFLATED_CHUNK,
    EMPTY_PREFIX,
    LOOPBACK_SEGMENT,
    gzip_finish,
    gzip_member,
    gzip_pieces,
    gzip_prefix,
    gzip_tail,
    inflate,
    stored_blocks,
)
from cerby_exporter.jobids import JobIdSource
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.simulator import Simulator, job_document
from tests.support import FINISHED as SIM_FINISHED
from tests.support import (
    Clock,
    Running,
    job_ids_with,
    openmetrics_families,
    parse_samples,
    raw_exchange,
    settings_for,
    value,
)

RUNNING = "aaaaaaaa-0000-0000-0000-000000000001"
FINISHED = "aaaaaaaa-0000-0000-0000-000000000002"
LATER = "aaaaaaaa-0000-0000-0000-000000000003"
TTL, TERMINAL_TTL, MAX_STALENESS = 60.0, 3600.0, 900.0
TEXT = "text/plain;version=0.0.4"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"


class FakeCerby:
    """Serves jobs from a table of attributes and counts the requests per job."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {
            RUNNING: attributes("running"),
            FINISHED: attributes("finished"),
            LATER: attributes("created"),
        }
        self.requests: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[-1]
        self.requests[job_id] = self.requests.get(job_id, 0) + 1
        if job_id not in self.jobs:
            return httpx.Response(404, json={"errors": []})
        return httpx.Response(200, json=job_document(job_id, self.jobs[job_id]))


def attributes(status: str) -> dict[str, Any]:
    return {
        "status": status,
        "workflowType": "password_rotation",
        "trigger": "workspace_policy",
        "canRetry": True,
        "account": {
            "id": "bbbbbbbb-0000-0000-0000-000000000001",
            "name": 'Brand "X"',
            "provider": "x",
        },
        "createdAt": "2024-09-05T20:46:14.357Z",
        "updatedAt": "2024-09-05T20:47:14.357Z",
    }


class Rig:
    def __init__(self, ids: JobIdSource, sparse: bool = False) -> None:
        self.clock = Clock(1_700_000_000.0)
        self.cerby = FakeCerby()
        metrics = ExporterMetrics()
        self.gate = RateLimitGate(self.clock)
        self.client = CerbyClient(
            "http://cerby.invalid/api/v1",
            ApiKey("test-key-1234", None, lambda _key: None),
            metrics,
            self.gate,
            request_timeout=5,
            max_connections=4,
            retries=0,
            rate_limit_backoff=300,
            transport=httpx.MockTransport(self.cerby),
            wall_clock=self.clock,
            monotonic=self.clock,
        )
        policy = TTLPolicy(TTL, TERMINAL_TTL)
        self.cache = JobCache(
            self.client,
            policy,
            metrics,
            self.gate,
            max_jobs=10,
            max_concurrency=4,
            clock=self.clock,
            wall_clock=self.clock,
        )
        view = View(TTL, TERMINAL_TTL, MAX_STALENESS, sparse_status=sparse, creator_labels=False)
        registry = CollectorRegistry(auto_describe=False)
        health = HealthCollector(MAX_STALENESS)
        registry.register(health)
        registry.register(metrics)
        self.collector = Collector(
            view,
            policy,
            ids,
            self.cache,
            self.client,
            metrics,
            self.gate,
            registry,
            health,
            default_scrape_timeout=10,
            scrape_timeout_offset=0.5,
            clock=self.clock,
            wall_clock=self.clock,
        )

    async def close(self) -> None:
        await self.cache.close()
        await self.client.close()

    async def scrape(self, openmetrics: bool = False) -> tuple[JobPart, bytes]:
        return await self.collector.scrape_parts(None, openmetrics)

    async def text(self, openmetrics: bool = False) -> str:
        jobs, rest = await self.scrape(openmetrics)
        return (await jobs.plain() + rest).decode()


def run(
    scenario: Callable[[Rig], Awaitable[None]], ids: JobIdSource | None = None, sparse: bool = False
) -> None:
    """Run `scenario` on a rig of its own, on one event loop."""

    async def main() -> None:
        rig = Rig(ids or JobIdSource((RUNNING, FINISHED), None, 10), sparse)
        try:
            await scenario(rig)
        finally:
            await rig.close()

    asyncio.run(main())


def job_ids_in(text: str, name: str) -> set[str]:
    return job_ids_with(parse_samples(text), name)


def test_warm_scrapes_send_the_same_job_part_rendered_once() -> None:
    async def scenario(rig: Rig) -> None:
        first_jobs, _ = await rig.scrape()
        renders = rig.collector.job_part_renders
        requests = dict(rig.cerby.requests)
        for _ in range(5):
            rig.clock.now += 10  # within every TTL
            jobs, rest = await rig.scrape()
            assert jobs is first_jobs
        assert rig.collector.job_part_renders == renders == 1
        assert rig.cerby.requests == requests == {RUNNING: 1, FINISHED: 1}
        samples = parse_samples((await jobs.plain() + rest).decode())
        assert value(samples, "cerby_cache_requests_total", result="hit") == 10
        assert value(samples, "cerby_up") == 1
        assert job_ids_with(samples, "cerby_job_info") == {RUNNING, FINISHED}

    run(scenario)


def test_the_job_part_is_compressed_once_and_inflated_once() -> None:
    async def scenario(rig: Rig) -> None:
        jobs, _ = await rig.scrape()
        together = await asyncio.gather(jobs.plain(), jobs.plain())
        assert together[0] is together[1]  # concurrent plain scrapes wait for the same bytes
        for _ in range(3):
            again, _ = await rig.scrape()
            assert again.gzip is jobs.gzip
            assert await again.plain() is together[0]
        assert jobs.gzip == gzip_prefix(together[0])
        assert rig.collector.job_part_renders == 1

    run(scenario)


def test_scrapes_arriving_while_the_job_part_is_made_share_it() -> None:
    async def scenario(rig: Rig) -> None:
        (first, _), (second, _), (third, _) = await asyncio.gather(
            rig.scrape(), rig.scrape(), rig.scrape(openmetrics=True)
        )
        assert first is second is third
        assert rig.collector.job_part_renders == 1
        assert job_ids_in((await first.plain()).decode(), "cerby_job_info") == {RUNNING, FINISHED}

    run(scenario)


def test_one_rendering_at_a_time_scrapes_of_newer_data_share_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(collector_module, "RENDER_TURN", 0.0)  # a rendering yields every piece

    async def scenario(rig: Rig) -> None:
        await rig.scrape()
        scrapes = []
        for _ in range(4):  # new data before each scrape, while the first rendering runs
            rig.cache.version += 1
            scrapes.append(asyncio.ensure_future(rig.scrape()))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        (first, _), *(later) = await asyncio.gather(*scrapes)
        assert rig.collector.job_part_renders == 3  # warm-up, the first, one for the other three
        assert later[0][0] is later[1][0] is later[2][0]
        assert first.version < later[0][0].version == rig.cache.version

    run(scenario)


def test_new_data_renders_the_job_part_again() -> None:
    async def scenario(rig: Rig) -> None:
        before = await rig.text()
        first, _ = await rig.scrape()
        first_prefix = first.gzip
        rig.cerby.jobs[RUNNING] = attributes("error")
        rig.clock.now += TTL + 1  # the running job is due, the finished one is not
        after = await rig.text()
        assert rig.collector.job_part_renders == 2
        assert rig.cerby.requests == {RUNNING: 2, FINISHED: 1}
        samples = parse_samples(after)
        status = {"job_id": RUNNING, "workflow_type": "password_rotation", "provider": "x"}
        assert value(samples, "cerby_job_status", **status, status="error") == 1
        assert value(samples, "cerby_job_status", **status, status="running") == 0
        assert before != after
        jobs, _ = await rig.scrape()
        prefix = jobs.gzip
        assert prefix is not first_prefix  # compressed anew, from the new data
        assert one_member(gzip_finish(prefix, b"")) == await jobs.plain()
        assert (await jobs.plain()).decode() in after

    run(scenario)


def test_a_job_crossing_its_staleness_limit_renders_again_without_new_data() -> None:
    async def scenario(rig: Rig) -> None:
        fetched = rig.clock.now
        await rig.text()
        rig.gate.trip(10 * TERMINAL_TTL)  # a long 429 back-off: no request, so no new data
        shown_until = fetched + TTL + MAX_STALENESS  # of the running job
        rig.clock.now = shown_until  # the last moment its data may be shown
        at_limit = parse_samples(await rig.text())
        assert rig.collector.job_part_renders == 1
        assert job_ids_with(at_limit, "cerby_job_info") == {RUNNING, FINISHED}
        assert value(at_limit, "cerby_stale_jobs") == 0

        rig.clock.now = shown_until + 0.001
        past = parse_samples(await rig.text())
        assert rig.collector.job_part_renders == 2
        assert rig.cerby.requests == {RUNNING: 1, FINISHED: 1}
        assert job_ids_with(past, "cerby_job_info") == {FINISHED}
        assert value(past, "cerby_job_fetch_success", job_id=RUNNING) == 0
        assert value(past, "cerby_stale_jobs") == 1
        await rig.text()
        assert rig.collector.job_part_renders == 2  # and that rendering holds again

    run(scenario)


def test_changed_job_ids_render_again(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids"
    ids_file.write_text(f"{RUNNING}\n")

    async def scenario(rig: Rig) -> None:
        assert job_ids_in(await rig.text(), "cerby_job_info") == {RUNNING}
        replacement = tmp_path / "ids.new"
        replacement.write_text(f"{RUNNING}\n{LATER}\n")
        replacement.replace(ids_file)
        assert job_ids_in(await rig.text(), "cerby_job_info") == {RUNNING, LATER}
        assert rig.collector.job_part_renders == 2

    run(scenario, JobIdSource((), ids_file, 10, recheck_seconds=0))


@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS])
def test_a_gzip_answer_is_one_member_holding_exactly_the_plain_body(accept: str) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.scrape()  # warm
        jobs, rest = await rig.scrape(openmetrics=accept == OPENMETRICS)
        prefix = jobs.gzip
        plain = await jobs.plain()
        member = prefix.deflated + gzip_tail(prefix, rest)  # as the answer is written
        # One member, as a streaming reader that stops at the first member end (httpx) sees it.
        reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
        assert reader.decompress(member) == plain + rest
        assert reader.eof
        assert reader.unused_data == b""
        assert gzip.decompress(member) == plain + rest
        assert member == gzip_finish(prefix, rest)
        assert rest.endswith(b"# EOF\n") == (accept == OPENMETRICS)

    run(scenario)


def test_text_and_openmetrics_answers_parse_and_share_the_job_part() -> None:
    async def scenario(rig: Rig) -> None:
        text_jobs, text_rest = await rig.scrape(openmetrics=False)
        om_jobs, om_rest = await rig.scrape(openmetrics=True)
        assert om_jobs is text_jobs  # one job part serves both formats
        assert rig.collector.job_part_renders == 1
        text = (await text_jobs.plain() + text_rest).decode()
        openmetrics = (await om_jobs.plain() + om_rest).decode()
        assert openmetrics.endswith("# EOF\n")
        assert not text.endswith("# EOF\n")

        families = {family.name: family for family in openmetrics_families(openmetrics)}
        info = [s for s in families["cerby_job_info"].samples if s.labels["job_id"] == RUNNING]
        assert info[0].labels["account_name"] == 'Brand "X"'
        assert families["cerby_api_requests"].type == "counter"
        assert families["cerby_up"].samples[0].value == 1
        samples = parse_samples(text)
        labels = {"job_id": RUNNING, "provider": "x", "workflow_type": "password_rotation"}
        assert value(samples, "cerby_job_status", **labels, status="running") == 1
        statuses = [key for key in samples if key[0] == "cerby_job_status"]
        assert len(statuses) == 2 * 7  # dense: every status of both jobs

    run(scenario)


def test_sparse_status_series_are_cached_the_same_way() -> None:
    async def scenario(rig: Rig) -> None:
        text = await rig.text()
        await rig.text()
        shown = {
            (dict(labels)["job_id"], dict(labels)["status"], number)
            for (name, labels), number in parse_samples(text).items()
            if name == "cerby_job_status"
        }
        assert shown == {(RUNNING, "running", 1.0), (FINISHED, "finished", 1.0)}
        assert rig.collector.job_part_renders == 1

    run(scenario, sparse=True)


@pytest.mark.parametrize(
    "size", [0, 1, 0xFFFF - 1, 0xFFFF, 0xFFFF + 1, 2 * 0xFFFF, 150_000]
)  # around the 64 KiB limit of one stored block
def test_stored_blocks_inflate_to_the_data_and_end_the_stream(size: int) -> None:
    data = bytes(n % 251 for n in range(size))
    reader = zlib.decompressobj(-zlib.MAX_WBITS)
    assert reader.decompress(stored_blocks(data)) == data
    assert reader.eof  # the last block is marked final


@pytest.mark.parametrize(
    "size", [0, 1, DEFLATED_CHUNK - 100, DEFLATED_CHUNK, 3 * DEFLATED_CHUNK + 5, 200_000]
)
def test_a_prefix_is_held_in_chunks_of_one_size_that_make_the_same_member(size: int) -> None:
    data = random.Random(size).randbytes(size)  # incompressible: deflated, about as long
    prefix = gzip_pieces(data[start : start + 1000] for start in range(0, size, 1000))
    deflated = b"".join(prefix.chunks)
    assert [len(chunk) for chunk in prefix.chunks[:-1]] == [DEFLATED_CHUNK] * (
        len(prefix.chunks) - 1
    )
    assert 0 < len(prefix.chunks[-1]) <= DEFLATED_CHUNK
    assert len(prefix.chunks) == -(-len(deflated) // DEFLATED_CHUNK)  # 4 at 3 chunks and 5 B
    assert (prefix.size, inflate(prefix)) == (size, data)
    assert gzip.decompress(gzip_finish(prefix, b"tail")) == data + b"tail"


@pytest.mark.parametrize(
    ("head", "tail"),
    [(b"", b""), (b"", b"cerby_up 1.0\n"), (b"a 1\n" * 1000, b""), (b"a 1\n", b"b" * 200_000)],
)
def test_a_compressed_prefix_and_a_stored_tail_make_one_member(head: bytes, tail: bytes) -> None:
    prefix = gzip_prefix(head) if head else EMPTY_PREFIX
    member = prefix.deflated + gzip_tail(prefix, tail)
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert reader.decompress(member) == head + tail  # the trailer's CRC and size check out
    assert reader.eof
    assert reader.unused_data == b""


def test_members_written_one_after_another_read_as_one_stream() -> None:
    """Any reader of RFC 1952 streams (Prometheus' Go client, Python's gzip) reads them all."""
    stream = gzip_member(b"a 1\n") + gzip_member(b"b 2\n")
    assert gzip.decompress(stream) == b"a 1\nb 2\n"


def over_the_wire(
    running: Running, path: str, accept: str, encoding: str
) -> tuple[dict[str, str], bytes]:
    """Headers and the body exactly as sent (still compressed, if it was)."""
    headers = {"Accept": accept, "Accept-Encoding": encoding}
    with httpx.stream("GET", running.url + path, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        return dict(response.headers), b"".join(response.iter_raw())


def one_member(raw: bytes) -> bytes:
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = reader.decompress(raw)
    assert reader.eof
    assert reader.unused_data == b""
    return data


@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS])
def test_over_the_wire_gzip_and_plain_answers_carry_the_same_job_part(
    simulator: Simulator, exporter_factory: Callable[..., Running], accept: str
) -> None:
    running = exporter_factory(**settings_for(simulator))
    collector = running.exporter.collector
    running.call(collector.ready.wait())
    plain_headers, plain = over_the_wire(running, "/metrics", accept, "identity")
    gzip_headers, raw = over_the_wire(running, "/metrics", accept, "gzip")
    jobs, _ = running.call(collector.scrape_parts(None, accept == OPENMETRICS))
    assert collector.job_part_renders == 1  # one rendering for every answer, in any format

    assert "content-encoding" not in plain_headers
    assert gzip_headers["content-encoding"] == "gzip"
    assert int(gzip_headers["content-length"]) == len(raw)
    assert int(plain_headers["content-length"]) == len(plain)
    unpacked = one_member(raw)
    job_part = running.call(jobs.plain())
    assert plain.startswith(job_part)
    assert unpacked.startswith(job_part)
    # The rest is rendered for each scrape (durations, counters): the same series, new values.
    assert parse_samples(plain.decode()).keys() == parse_samples(unpacked.decode()).keys()
    for body, headers in ((plain, plain_headers), (unpacked, gzip_headers)):
        if accept == OPENMETRICS:
            assert headers["content-type"].startswith("application/openmetrics-text")
            assert body.endswith(b"# EOF\n")
            names = {family.name for family in openmetrics_families(body.decode())}
            assert {"cerby_job_info", "cerby_up", "cerby_api_requests"} <= names
        else:
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert not body.endswith(b"# EOF\n")


def test_a_gzip_answers_head_and_a_deflated_chunk_fit_one_loopback_segment(
    simulator: Simulator, exporter_factory: Callable[..., Running]
) -> None:
    """Each chunk is one write; the first goes out with the head. A chunk a little too long
    would cost a segment of a few bytes per write on loopback."""
    running = exporter_factory(**settings_for(simulator))
    running.call(running.exporter.collector.ready.wait())
    request = (
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain;version=0.0.4\r\n"
        b"Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    received = raw_exchange(running.port, request).received
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"\r\ncontent-encoding: gzip" in head.lower()
    assert b"\ncerby_job_info{" in gzip.decompress(body)
    assert 200 < len(head) + 4 <= LOOPBACK_SEGMENT - DEFLATED_CHUNK
    assert LOOPBACK_SEGMENT == 65_483


@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS])
def test_a_gzip_probe_decompresses_to_exactly_the_plain_probe(
    simulator: Simulator, exporter_factory: Callable[..., Running], accept: str
) -> None:
    running = exporter_factory(**settings_for(simulator))
    path = f"/probe?target={SIM_FINISHED}"
    _, plain = over_the_wire(running, path, accept, "identity")
    headers, raw = over_the_wire(running, path, accept, "gzip")
    assert headers["content-encoding"] == "gzip"
    assert one_member(raw) == plain
    assert plain.endswith(b"# EOF\n") == (accept == OPENMETRICS)
    assert job_ids_in(plain.removesuffix(b"# EOF\n").decode(), "cerby_job_info") == {SIM_FINISHED}
