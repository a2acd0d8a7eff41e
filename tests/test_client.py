"""The client against the simulator over real sockets: every failure lands in its class."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from cryptography.x509.oid import ExtendedKeyUsageOID

from cerby_exporter.app import start_server
from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.client import (
    NIL_JOB_ID,
    ApiKey,
    BackedOff,
    CerbyClient,
    FetchError,
    classify_status,
    key_accepted,
    timed_out,
    transport_failure,
)
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import Job
from cerby_exporter.simulator import Faults, Simulator
from tests.support import API_KEY, FAILED, FINISHED, MISSING, issue


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (200, None),
        (204, None),
        (301, "invalid_response"),
        (302, "invalid_response"),
        (400, "invalid_response"),
        (401, "unauthorized"),
        (403, "unauthorized"),
        (404, "not_found"),
        (409, "invalid_response"),
        (429, "rate_limited"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_classify_status(code: int, reason: str | None) -> None:
    assert classify_status(code) == reason


@pytest.mark.parametrize(
    ("code", "accepted"),
    [(200, True), (302, True), (404, True), (429, True), (401, False), (403, False),
     (500, False), (503, False)],
)  # fmt: skip
def test_key_accepted_only_by_a_cerby_that_answered_without_refusing(
    code: int, accepted: bool
) -> None:
    assert key_accepted(code) is accepted


async def no_sleep(_seconds: float) -> None:
    """Retries go out at once: the tests count requests, they do not wait for back-off."""


@asynccontextmanager
async def client_for(
    base_url: str,
    key: str = API_KEY,
    timeout: float = 2.0,
    retries: int = 0,
    gate: RateLimitGate | None = None,
    **kwargs: Any,
) -> AsyncIterator[tuple[CerbyClient, ExporterMetrics, RateLimitGate]]:
    metrics = ExporterMetrics()
    gate = gate or RateLimitGate(time.time)
    kwargs.setdefault("sleep", no_sleep)
    client = CerbyClient(
        base_url,
        ApiKey(key, None, lambda _key: None),
        metrics,
        gate,
        request_timeout=timeout,
        max_connections=4,
        retries=retries,
        rate_limit_backoff=300,
        **kwargs,
    )
    try:
        yield client, metrics, gate
    finally:
        await client.close()


async def fetch(client: CerbyClient, job_id: str = FINISHED) -> Job | FetchError:
    return (await client.fetch_job(job_id, time.monotonic() + 30))[0]


def test_fetches_a_job_with_the_key_header(simulator: Simulator) -> None:
    async def scenario() -> None:
        async with client_for(simulator.base_url) as (client, metrics, _):
            result = await fetch(client, FAILED)
        assert isinstance(result, Job)
        assert result.status == "error"
        assert result.trigger == "user_deprovisioned"
        assert metrics.responses() == {"200": 1}

    asyncio.run(scenario())
    assert simulator.workspace.stats()["by_job"] == {FAILED: 1}


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        (Faults(status=500), "server_error"),
        (Faults(status=503), "server_error"),
        (Faults(status=403), "unauthorized"),
        (Faults(status=400), "invalid_response"),
        (Faults(malformed=True), "invalid_response"),
        (Faults(fault="truncated"), "transport"),
        (Faults(fault="oversize"), "invalid_response"),
        (Faults(fault="content_type"), "invalid_response"),
        (Faults(fault="reset"), "transport"),
        (Faults(fault="hang"), "timeout"),
    ],
)
def test_each_failure_is_classified(simulator: Simulator, faults: Faults, reason: str) -> None:
    simulator.workspace.set_faults(faults)

    async def scenario() -> Job | FetchError:
        async with client_for(simulator.base_url, timeout=0.5) as (client, _, _):
            return await fetch(client)

    result = asyncio.run(scenario())
    assert isinstance(result, FetchError)
    assert result.reason == reason


def test_nulls_and_unknown_fields_still_parse(simulator: Simulator) -> None:
    async def scenario() -> tuple[Job | FetchError, Job | FetchError]:
        async with client_for(simulator.base_url) as (client, _, _):
            simulator.workspace.set_faults(Faults(fault="nulls"))
            nulls = await fetch(client)
            simulator.workspace.set_faults(Faults(fault="unknown_fields"))
            return nulls, await fetch(client)

    nulls, odd = asyncio.run(scenario())
    assert isinstance(nulls, Job)
    assert (nulls.status, nulls.workflow_type, nulls.can_retry) == ("unknown", None, None)
    assert isinstance(odd, Job)
    assert (odd.status, odd.raw_status, odd.provider) == ("unknown", "paused", "twitter")


def test_not_found_and_wrong_key(simulator: Simulator) -> None:
    async def scenario() -> None:
        async with client_for(simulator.base_url) as (client, metrics, _):
            missing, attempt = await client.fetch_job(MISSING, time.monotonic() + 5)
        assert isinstance(missing, FetchError)
        assert missing.reason == "not_found"
        assert attempt.key_accepted is True  # a 404 comes from a Cerby that took the key
        assert metrics.responses() == {"404": 1}
        async with client_for(simulator.base_url, key="wrong-key-0000") as (bad_key, _, _):
            result, attempt = await bad_key.fetch_job(FINISHED, time.monotonic() + 5)
        assert isinstance(result, FetchError)
        assert result.reason == "unauthorized"
        assert attempt.key_accepted is False

    asyncio.run(scenario())


def test_transient_failures_are_retried_within_bounds(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=502, count=2))
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    async def scenario() -> None:
        opened = client_for(simulator.base_url, retries=2, sleep=sleep, rand=lambda: 1.0)
        async with opened as (client, metrics, _):
            result, attempt = await client.fetch_job(FINISHED, time.monotonic() + 30)
        assert isinstance(result, Job)
        assert attempt.requests == 3
        assert metrics.responses() == {"502": 2, "200": 1}

    asyncio.run(scenario())
    assert delays == [0.25, 0.5]  # exponential back-off between the tries, at its ceiling here


def test_retries_stop_at_the_limit(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=500))

    async def scenario() -> None:
        async with client_for(simulator.base_url, retries=3) as (client, _, _):
            result, attempt = await client.fetch_job(FINISHED, time.monotonic() + 30)
        assert isinstance(result, FetchError)
        assert attempt.requests == 4

    asyncio.run(scenario())


def test_retries_stop_at_the_deadline(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=500))

    async def scenario() -> None:
        async with client_for(simulator.base_url, retries=5) as (client, _, _):
            _, attempt = await client.fetch_job(FINISHED, time.monotonic() + 0.5)
        assert attempt.requests == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409])
def test_other_4xx_are_never_retried(simulator: Simulator, code: int) -> None:
    simulator.workspace.set_faults(Faults(status=code))

    async def scenario() -> None:
        async with client_for(simulator.base_url, retries=5) as (client, _, _):
            _, attempt = await client.fetch_job(FINISHED, time.monotonic() + 30)
        assert attempt.requests == 1

    asyncio.run(scenario())


def test_429_closes_the_gate_for_retry_after(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=429, retry_after="120", count=1))

    async def scenario() -> None:
        async with client_for(simulator.base_url, retries=3) as (client, _, gate):
            before = time.time()
            result = await fetch(client)
            assert isinstance(result, FetchError)
            assert result.reason == "rate_limited"
            assert gate.closed()
            assert before + 119 <= gate.until <= time.time() + 121
            with pytest.raises(BackedOff):
                await client.fetch_job(FINISHED, time.monotonic() + 30)
            assert await client.check_key(time.monotonic() + 30) is None  # nothing asked

    asyncio.run(scenario())
    assert simulator.workspace.stats()["requests"] == 1


def test_429_without_retry_after_uses_the_default(simulator: Simulator) -> None:
    simulator.workspace.set_faults(Faults(status=429))

    async def scenario() -> None:
        async with client_for(simulator.base_url) as (client, _, gate):
            await fetch(client)
        assert gate.until == pytest.approx(time.time() + 300, abs=5)

    asyncio.run(scenario())


def test_a_gate_closed_between_retries_ends_them_with_the_real_failure(
    simulator: Simulator,
) -> None:
    """Another job's 429 arrives while this one waits to retry its 500."""
    simulator.workspace.set_faults(Faults(status=500))

    async def scenario() -> None:
        gate = RateLimitGate(time.time)

        async def sleep(_seconds: float) -> None:
            gate.trip(300)

        opened = client_for(simulator.base_url, retries=3, gate=gate, sleep=sleep)
        async with opened as (client, _, _):
            result, attempt = await client.fetch_job(FINISHED, time.monotonic() + 30)
        assert isinstance(result, FetchError)
        assert result.reason == "server_error"
        assert attempt.requests == 1

    asyncio.run(scenario())


def test_redirects_are_not_followed() -> None:
    """The key goes to the configured host only: a redirect is an invalid answer, not a hop."""
    seen: list[tuple[str, str | None]] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("X-API-Key")))
        raise web.HTTPFound(f"http://{request.host}/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("X-API-Key")))
        return web.json_response({"data": {"attributes": {"status": "finished"}}})

    async def scenario() -> Job | FetchError:
        app = web.Application()
        app.router.add_get("/api/v1/jobs/{job_id}", redirect)
        app.router.add_get("/elsewhere", elsewhere)
        runner, port = await start_server(app, "127.0.0.1", 0)
        try:
            async with client_for(f"http://127.0.0.1:{port}/api/v1") as (client, _, _):
                return await fetch(client)
        finally:
            await runner.cleanup()

    result = asyncio.run(scenario())
    assert isinstance(result, FetchError)
    assert result.reason == "invalid_response"
    assert result.status == 302
    assert seen == [(f"/api/v1/jobs/{FINISHED}", API_KEY)]  # the Location was not visited


def test_connection_refused_is_transport() -> None:
    async def scenario() -> None:
        async with client_for("http://127.0.0.1:9/api/v1") as (client, metrics, _):
            result, attempt = await client.fetch_job(FINISHED, time.monotonic() + 5)
        assert isinstance(result, FetchError)
        assert result.reason == "transport"
        assert attempt.key_accepted is None
        assert metrics.responses() == {}

    asyncio.run(scenario())


def test_check_key(simulator: Simulator) -> None:
    async def scenario() -> tuple[bool | None, bool | None]:
        async with client_for(simulator.base_url) as (good, _, _):
            accepted = await good.check_key(time.monotonic() + 5)
        async with client_for(simulator.base_url, key="wrong-key-0000") as (bad, _, _):
            refused = await bad.check_key(time.monotonic() + 5)
        return accepted, refused

    assert asyncio.run(scenario()) == (True, False)
    assert simulator.workspace.stats()["by_job"] == {NIL_JOB_ID: 2}  # a job that cannot exist


def test_key_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("old-key-1234\n")
    seen: list[str] = []
    key = ApiKey(None, path, seen.append, recheck_seconds=0)

    async def scenario() -> None:
        assert await key.get() == "old-key-1234"
        path.write_text(API_KEY + "\n")
        assert await key.get() == API_KEY
        assert seen == ["old-key-1234", API_KEY]  # the redactor knows each key before use
        path.write_text("\n")
        assert await key.get() == API_KEY  # an emptied file keeps the key in use
        path.unlink()
        assert await key.get() == API_KEY  # and so does a vanished one
        path.mkdir()
        assert await key.get() == API_KEY  # and an unreadable one
        assert seen == ["old-key-1234", API_KEY]

    asyncio.run(scenario())


def test_the_key_file_is_looked_at_once_per_recheck_period(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("old-key-1234\n")
    key = ApiKey(None, path, lambda _key: None, recheck_seconds=3600)

    async def scenario() -> tuple[str, str]:
        first = await key.get()
        path.write_text(API_KEY + "\n")
        return first, await key.get()

    assert asyncio.run(scenario()) == ("old-key-1234", "old-key-1234")


def test_a_fixed_key_goes_to_the_redactor_before_any_use() -> None:
    seen: list[str] = []
    key = ApiKey(API_KEY, None, seen.append)
    assert seen == [API_KEY]
    assert asyncio.run(key.get()) == API_KEY


def test_concurrent_first_reads_of_the_key_file_all_get_the_key(tmp_path: Path) -> None:
    """At start many fetches ask at once; none may go out with the empty key before the read."""
    path = tmp_path / "key"
    path.write_text(API_KEY + "\n")
    seen: list[str] = []
    key = ApiKey(None, path, seen.append)

    async def scenario() -> list[str]:
        return await asyncio.gather(*(key.get() for _ in range(8)))

    assert asyncio.run(scenario()) == [API_KEY] * 8
    assert seen == [API_KEY]


@pytest.mark.parametrize(
    ("first", "timeout"),
    [
        (None, True),  # our own deadline on a trickling body
        (aiohttp.ServerTimeoutError(), True),
        (TimeoutError(), True),
        (aiohttp.ServerDisconnectedError(), False),  # reported as ConnectTimeout by the transport
        (aiohttp.ClientOSError(104, "Connection reset by peer"), False),
    ],
)
def test_a_timeout_is_told_from_a_broken_connection(first: Exception | None, timeout: bool) -> None:
    error = httpx.ConnectTimeout("wrapped")
    error.__cause__ = first
    assert timed_out(error) is timeout
    assert transport_failure(error) == type(first if first is not None else error).__name__
    assert not timed_out(httpx.ConnectError("refused"))


def test_cerby_over_tls_is_trusted_only_through_the_ca_bundle(tmp_path: Path) -> None:
    ca = issue(tmp_path, "ca", None)
    issue(tmp_path, "server", ca, ExtendedKeyUsageOID.SERVER_AUTH)
    issue(tmp_path, "other-ca", None)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    keys_seen: list[str] = []

    async def job(request: web.Request) -> web.Response:
        keys_seen.append(request.headers.get("X-API-Key", ""))
        attributes = {"status": "finished", "workflowType": "password_rotation"}
        document = {"data": {"id": FINISHED, "type": "job", "attributes": attributes}}
        return web.json_response(document)

    async def scenario() -> tuple[Job | FetchError, Job | FetchError]:
        app = web.Application()
        app.router.add_get("/api/v1/jobs/{job_id}", job)
        runner, port = await start_server(app, "127.0.0.1", 0, served)
        base = f"https://127.0.0.1:{port}/api/v1"
        try:
            async with client_for(base, ca_bundle=tmp_path / "ca.crt") as (client, _, _):
                trusted = await fetch(client)
            async with client_for(base, ca_bundle=tmp_path / "other-ca.crt") as (client, _, _):
                refused = await fetch(client)
        finally:
            await runner.cleanup()
        return trusted, refused

    trusted, refused = asyncio.run(scenario())
    assert isinstance(trusted, Job)
    assert (trusted.status, trusted.workflow_type) == ("finished", "password_rotation")
    assert isinstance(refused, FetchError)
    assert refused.reason == "transport"
    assert keys_seen == [API_KEY]  # the key never went to the server that could not be trusted
