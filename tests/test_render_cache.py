"""The job part of the exposition: rendered once per change of data, compressed once, reused.

A rig wires the real settings-free chain (client -> cache -> collector -> app) to an in-memory
Cerby (httpx.MockTransport) and one injected clock, so time moves only when a test moves it.
"""

from __future__ import annotations

import gzip
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.utils import floatToGoString as _untyped_go_string

from cerby_exporter.app import App, Request, Response
from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import JobCache, TTLPolicy
from cerby_exporter.client import ApiKey, CerbyClient
from cerby_exporter.collector import Collector, View
from cerby_exporter.exposition import go_float, gzip_finish, gzip_member
from cerby_exporter.jobids import JobIdSource
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.simulator import job_document

parse_openmetrics = cast(
    Callable[[str], Iterable[Metric]], openmetrics_parser.text_string_to_metric_families
)
generate_openmetrics = cast(
    Callable[[CollectorRegistry], bytes], openmetrics_exposition.generate_latest
)

RUNNING = "aaaaaaaa-0000-0000-0000-000000000001"
FINISHED = "aaaaaaaa-0000-0000-0000-000000000002"
LATER = "aaaaaaaa-0000-0000-0000-000000000003"
TTL, TERMINAL_TTL, MAX_STALENESS = 60.0, 3600.0, 900.0
TEXT = "text/plain;version=0.0.4"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeCerby:
    """Serves jobs from a table of attributes and counts the requests per job."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {
            RUNNING: attributes("running"),
            FINISHED: attributes("finished"),
            LATER: attributes("created"),
        }
        self.requests: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        job_id = request.url.path.rsplit("/", 1)[-1]
        with self.lock:
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
        self.clock = Clock()
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
        self.collector = Collector(
            view,
            policy,
            ids,
            self.cache,
            self.client,
            metrics,
            self.gate,
            default_scrape_timeout=10,
            scrape_timeout_offset=0.5,
            clock=self.clock,
            wall_clock=self.clock,
        )
        self.app = App(self.collector, self.close)

    def close(self) -> None:
        self.cache.close()
        self.client.close()

    def get(self, accept: str = TEXT, encoding: str = "") -> Response:
        headers = {"accept": accept, "accept-encoding": encoding}
        return self.app.handle(Request("GET", "/metrics", {}, headers))

    def text(self) -> str:
        return self.get().content().decode()


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig(JobIdSource((RUNNING, FINISHED), None, 10))
    yield made
    made.close()


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called `name`, keyed by their sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def job_ids_in(text: str, name: str) -> set[str]:
    return {dict(labels)["job_id"] for labels in series(text, name)}


def test_warm_scrapes_send_the_same_job_part_rendered_once(rig: Rig) -> None:
    first_jobs, _ = rig.collector.scrape_parts(None, openmetrics=False)
    renders = rig.collector.job_part_renders
    requests = dict(rig.cerby.requests)
    for _ in range(5):
        rig.clock.now += 10  # within every TTL
        jobs, rest = rig.collector.scrape_parts(None, openmetrics=False)
        assert jobs is first_jobs
    assert rig.collector.job_part_renders == renders == 1
    assert rig.cerby.requests == requests == {RUNNING: 1, FINISHED: 1}
    text = (jobs.body + rest).decode()
    assert series(text, "cerby_cache_requests_total")[(("result", "hit"),)] == 10
    assert job_ids_in(text, "cerby_job_info") == {RUNNING, FINISHED}


def test_the_compressed_job_part_is_made_once(rig: Rig) -> None:
    rig.get(encoding="gzip")
    jobs, _ = rig.collector.scrape_parts(None, openmetrics=False)
    prefix, in_file = jobs.gzip_prefix()
    assert in_file.data is prefix.deflated
    assert in_file.fd is not None  # Linux has memfd_create
    assert os.pread(in_file.fd, len(in_file) + 1, 0) == prefix.deflated
    for _ in range(3):
        response = rig.get(encoding="gzip")
        assert response.more[0] is in_file  # sent as it lies, not copied
    assert rig.collector.job_part_renders == 1


def test_new_data_renders_the_job_part_again(rig: Rig) -> None:
    before = rig.text()
    rig.cerby.jobs[RUNNING] = attributes("error")
    rig.clock.now += TTL + 1  # the running job is due, the finished one is not
    after = rig.text()
    assert rig.collector.job_part_renders == 2
    assert rig.cerby.requests == {RUNNING: 2, FINISHED: 1}
    status = series(after, "cerby_job_status")
    running = {dict(k)["status"]: v for k, v in status.items() if dict(k)["job_id"] == RUNNING}
    assert running["error"] == 1
    assert running["running"] == 0
    assert before != after


def test_a_job_crossing_its_staleness_limit_renders_again_without_new_data(rig: Rig) -> None:
    fetched = rig.clock.now
    rig.text()
    rig.gate.trip(10 * TERMINAL_TTL)  # a long 429 back-off: no request, so no new data
    shown_until = fetched + TTL + MAX_STALENESS  # of the running job
    rig.clock.now = shown_until  # the last moment its data may be shown
    at_limit = rig.text()
    assert rig.collector.job_part_renders == 1
    assert job_ids_in(at_limit, "cerby_job_info") == {RUNNING, FINISHED}
    assert series(at_limit, "cerby_stale_jobs") == {(): 0}

    rig.clock.now = shown_until + 0.001
    past = rig.text()
    assert rig.collector.job_part_renders == 2
    assert rig.cerby.requests == {RUNNING: 1, FINISHED: 1}
    assert job_ids_in(past, "cerby_job_info") == {FINISHED}
    assert series(past, "cerby_job_fetch_success")[(("job_id", RUNNING),)] == 0
    assert series(past, "cerby_stale_jobs") == {(): 1}
    rig.text()
    assert rig.collector.job_part_renders == 2  # and that rendering holds again


def test_changed_job_ids_render_again(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids"
    ids_file.write_text(f"{RUNNING}\n")
    made = Rig(JobIdSource((), ids_file, 10))
    try:
        assert job_ids_in(made.text(), "cerby_job_info") == {RUNNING}
        replacement = tmp_path / "ids.new"
        replacement.write_text(f"{RUNNING}\n{LATER}\n")
        replacement.replace(ids_file)
        assert job_ids_in(made.text(), "cerby_job_info") == {RUNNING, LATER}
        assert made.collector.job_part_renders == 2
    finally:
        made.close()


@pytest.mark.parametrize("accept", [TEXT, OPENMETRICS])
def test_a_gzip_answer_is_one_member_holding_exactly_the_plain_body(rig: Rig, accept: str) -> None:
    rig.get()  # warm
    jobs, rest = rig.collector.scrape_parts(None, openmetrics=accept == OPENMETRICS)
    member = gzip_finish(jobs.gzip_prefix()[0], rest)
    # One member, as a streaming reader that stops at the first member end (httpx) sees it.
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert reader.decompress(member) == jobs.body + rest
    assert reader.eof
    assert reader.unused_data == b""
    assert gzip.decompress(member) == jobs.body + rest

    response = rig.get(accept, encoding="gzip")
    assert dict(response.headers)["Content-Encoding"] == "gzip"
    assert response.length == len(response.content())
    text = gzip.decompress(response.content())
    assert text.startswith(jobs.body)
    assert text.endswith(b"# EOF\n") == (accept == OPENMETRICS)


def test_members_written_one_after_another_read_as_one_stream() -> None:
    """Any reader of RFC 1952 streams (Prometheus' Go client, Python's gzip) reads them all."""
    stream = gzip_member(b"a 1\n") + gzip_member(b"b 2\n")
    assert gzip.decompress(stream) == b"a 1\nb 2\n"


def test_text_and_openmetrics_answers_parse_and_share_the_job_part(rig: Rig) -> None:
    text = rig.get(TEXT).content().decode()
    openmetrics = rig.get(OPENMETRICS).content().decode()
    assert rig.collector.job_part_renders == 1  # one job part serves both formats
    jobs, _ = rig.collector.scrape_parts(None, openmetrics=True)
    assert text.encode().startswith(jobs.body)
    assert openmetrics.encode().startswith(jobs.body)
    assert openmetrics.endswith("# EOF\n")
    assert not text.endswith("# EOF\n")

    families = {family.name: family for family in parse_openmetrics(openmetrics)}
    info = [s for s in families["cerby_job_info"].samples if s.labels["job_id"] == RUNNING]
    assert info[0].labels["account_name"] == 'Brand "X"'
    assert families["cerby_api_requests"].type == "counter"
    status = series(text, "cerby_job_status")
    labels = (
        ("job_id", RUNNING),
        ("provider", "x"),
        ("status", "running"),
        ("workflow_type", "password_rotation"),
    )
    assert status[labels] == 1
    assert len(status) == 2 * 7  # dense: every status of both jobs


def test_sparse_status_series_are_cached_the_same_way() -> None:
    made = Rig(JobIdSource((RUNNING, FINISHED), None, 10), sparse=True)
    try:
        text = made.text()
        made.text()
        status = series(text, "cerby_job_status")
        shown = {(dict(k)["job_id"], dict(k)["status"], v) for k, v in status.items()}
        assert shown == {(RUNNING, "running", 1.0), (FINISHED, "finished", 1.0)}
        assert made.collector.job_part_renders == 1
    finally:
        made.close()


go_string = cast(Callable[[float], str], _untyped_go_string)


@pytest.mark.parametrize(
    "number",
    [0.0, -0.0, 1.0, -1.5, 1e-07, 0.1, 123456.0, 1234567.0, 12345678.9, 1e22, -3e-300,
     float("inf"), float("-inf"), float("nan"), 10**7, 2**53 + 1],
)  # fmt: skip
def test_values_are_written_as_prometheus_client_writes_them(number: float) -> None:
    assert go_float(number) == go_string(number)


def test_own_metrics_are_written_byte_for_byte_as_prometheus_client_writes_them() -> None:
    metrics = ExporterMetrics()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    assert metrics.render(openmetrics=False) == generate_latest(registry)  # all zero
    for code, seconds in ((200, 0.004), (200, 0.2), (404, 3.0), (500, 20.0), (429, 0.005)):
        metrics.observe_response(code, seconds)
    metrics.observe_failed_request(11.0)
    metrics.count_fetch_error("timeout")
    metrics.count_cache(10**7, 3, 2)
    text = metrics.render(openmetrics=False)
    assert text == generate_latest(registry)
    assert metrics.render(openmetrics=True) + b"# EOF\n" == generate_openmetrics(registry)
    assert b'cerby_api_requests_total{code="429"} 1.0\n' in text
    assert b'cerby_api_request_duration_seconds_bucket{le="0.005"} 2.0\n' in text
    assert b"cerby_api_request_duration_seconds_count 6.0\n" in text
    assert b'cerby_cache_requests_total{result="hit"} 1e+07\n' in text
