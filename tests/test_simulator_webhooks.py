"""The simulator's webhooks, received on loopback by a receiver that checks every signature.

Each test runs the simulator and the receiver on one event loop, as the demo does, with delays
scaled down to hundredths of a second.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict

from cerby_exporter import signatures
from cerby_exporter.simulator import SimJob, Simulator, Workspace
from cerby_exporter.simulator_webhooks import ERROR_CODES, WebhookDelivery, retry_after_delay
from tests.support import (
    API_KEY,
    FAILED,
    FINISHED,
    RUNNING,
    SimulatorProcess,
    job_attributes,
    small_workspace,
)

KEY_ID = "6f1c1e0a-3b5d-4c2e-9a7f-1d2e3f4a5b6c"
HMAC_SECRET = b"simulator-test-secret-0123456789"
FAST: dict[str, Any] = {
    "redeliver_share": 0.0,
    "bad_signature_share": 0.0,
    "shuffle": 1,
    "retry_base": 0.05,
    "watch_every": 0.02,
}
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def run(work: Coroutine[Any, Any, None]) -> None:
    asyncio.run(work)


@dataclass
class Received:
    headers: CIMultiDict[str]
    body: bytes
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    @property
    def event_id(self) -> str:
        return str(self.event["event_id"])


Answer = Callable[[Received], web.StreamResponse]


def accept(received: Received) -> web.StreamResponse:
    return web.json_response({}, status=200 if received.verified else 401)


Verifier = Callable[[bytes, "CIMultiDict[str]"], bool]


def verifier(algorithm: str, key: Any) -> Verifier:
    """Checks a delivery with the exporter's own verification, against the one key of the test."""
    installed = signatures.Keys.of(
        signatures.Ed25519Key(KEY_ID, key)
        if algorithm == "ed25519"
        else signatures.HmacKey(KEY_ID, key)
    )

    def verify(body: bytes, headers: CIMultiDict[str]) -> bool:
        verdict = signatures.verify(body, headers, installed, time.time())
        return verdict.result == "verified"

    return verify


class Receiver:
    """Records every delivery, whether its signature verifies, and answers as `answer` says."""

    def __init__(self, verify: Verifier, answer: Answer = accept) -> None:
        self._verify = verify
        self.answer = answer
        self.received: list[Received] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = CIMultiDict(request.headers)
        received = Received(headers, body, self._verify(body, headers))
        self.received.append(received)
        return self.answer(received)

    def verified(self) -> list[Received]:
        return [received for received in self.received if received.verified]

    def event_types(self) -> Counter[str]:
        return Counter(str(received.event["event_type"]) for received in self.verified())


async def listening(receiver: Receiver) -> tuple[web.AppRunner, str]:
    """The receiver on a loopback port; its runner, to clean up, and its URL."""
    app = web.Application()
    app.router.add_post("/webhooks/cerby", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site.port}/webhooks/cerby"


@asynccontextmanager
async def delivering(
    jobs: dict[str, SimJob],
    answer: Answer = accept,
    *,
    algorithm: str = "ed25519",
    **settings: Any,
) -> AsyncIterator[tuple[Simulator, Receiver]]:
    """A simulator delivering to a receiver, wired as the demo wires them: the simulator
    serves first, and learns where to deliver once the receiver listens."""
    key: Any = Ed25519PrivateKey.generate() if algorithm == "ed25519" else HMAC_SECRET
    public: Any = key.public_key() if algorithm == "ed25519" else key
    receiver = Receiver(verifier(algorithm, public), answer)
    runner, url = await listening(receiver)
    simulator = await Simulator(Workspace(jobs, API_KEY)).serve()
    simulator.deliver_to(
        WebhookDelivery(url, KEY_ID, key, algorithm=algorithm, **{**FAST, **settings})
    )
    try:
        yield simulator, receiver
    finally:
        await simulator.close()
        await runner.cleanup()


def stats(simulator: Simulator) -> dict[str, Any]:
    assert simulator.webhooks is not None
    return simulator.webhooks.stats()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def settled(simulator: Simulator, events: int) -> None:
    """Once `events` events were made and every delivery of them has ended."""
    await until(lambda: stats(simulator)["events"] >= events and stats(simulator)["pending"] == 0)


def finished_jobs(count: int) -> dict[str, SimJob]:
    """Jobs of a workflow with no specific event, so one event each."""
    attributes = job_attributes(workflowType="healthcheck_mfa")
    return {str(uuid.UUID(int=n + 1)): SimJob([(0.0, attributes)]) for n in range(count)}


@pytest.mark.parametrize(
    ("algorithm", "form"), [("ed25519", "header"), ("ed25519", "millis"), ("hmac-sha256", "header")]
)
def test_ended_jobs_arrive_signed(algorithm: str, form: str) -> None:
    async def scenario() -> None:
        async with delivering(small_workspace(), algorithm=algorithm, timestamp_form=form) as (
            sim,
            receiver,
        ):
            await settled(sim, 3)
            assert receiver.event_types() == {
                "automation.succeeded": 1,
                "automation.password.rotated": 1,
                "automation.failed": 1,
            }
            assert all(received.verified for received in receiver.received)
            by_type = {str(r.event["event_type"]): r for r in receiver.received}
            failed = by_type["automation.failed"]
            assert failed.event["data"] == {
                "automation_job_id": FAILED,
                "application": "twitter",
                "account_id": "aaaaaaaa-0000-0000-0000-000000000001",
                "automation_link": f"https://demo.cerby.invalid/automations/{FAILED}",
                "action": "revoke_access",
                "remediation": failed.event["data"]["remediation"],
            }
            assert failed.event["error"]["code"] in ERROR_CODES
            assert set(failed.event["error"]) == {"code", "message", "user_action"}
            succeeded = by_type["automation.succeeded"]
            assert "error" not in succeeded.event
            assert succeeded.event["data"]["automation_job_id"] == FINISHED
            assert succeeded.event["data"]["action"] == "password_rotation"
            for received in receiver.received:
                event = received.event
                assert event["envelope_version"] == "1.0"
                assert event["workspace_id"] == sim.workspace.workspace_id
                assert uuid.UUID(event["event_id"]).version == 7
                assert RFC3339_MS.fullmatch(event["occurred_at"])
                headers = received.headers
                assert headers["Content-Type"] == "application/json"
                assert headers["X-Cerby-Attempt"] == "1"
                assert headers["Idempotency-Key"] == headers["X-Cerby-Delivery"]
                assert headers["X-Cerby-Signature-Key-Id"] == KEY_ID
                assert headers["X-Cerby-Signature"].startswith(f"{algorithm}=")
            assert len({r.event_id for r in receiver.received}) == 3
            assert len({r.headers["X-Cerby-Delivery"] for r in receiver.received}) == 3

            # A job that ends later is reported when it ends, and only then.
            sim.workspace.set_job(RUNNING, {"status": "finished"})
            await settled(sim, 5)
            assert receiver.event_types()["automation.mfa.enabled"] == 1
            assert receiver.received[-1].event["data"]["automation_job_id"] == RUNNING

            async with httpx.AsyncClient() as client:
                answer = await client.get(sim.base_url.removesuffix("/api/v1") + "/_sim/stats")
            webhooks = answer.json()["webhooks"]
            assert webhooks["sent"] == 5
            assert webhooks["delivered"] == 5
            assert webhooks["redelivered"] == 0
            assert webhooks["bad_signature"] == 0
            assert webhooks["answers"] == {"200": 5}

    run(scenario())


def test_new_jobs_are_served_and_announced() -> None:
    async def scenario() -> None:
        spawning: dict[str, Any] = {
            "new_job_every": 0.1,
            "account_share": 1.0,
            "failure_share": 0.5,
        }
        async with delivering({}, accept, **spawning) as (sim, receiver):
            ends = {"automation.succeeded": "finished", "automation.failed": "error"}

            def job_events() -> list[dict[str, Any]]:
                events = [r.event for r in receiver.verified()]
                return [e for e in events if e["event_type"] in ends]

            await until(lambda: len(job_events()) >= 2)
            async with httpx.AsyncClient(headers={"X-API-Key": API_KEY}) as client:
                for event in job_events():
                    job_id = event["data"]["automation_job_id"]
                    answer = await client.get(f"{sim.base_url}/jobs/{job_id}")
                    assert answer.status_code == 200
                    attributes = answer.json()["data"]["attributes"]
                    assert attributes["status"] == ends[event["event_type"]]
                    assert attributes["workflowType"] == event["data"]["action"]
                    assert attributes["account"]["provider"] == event["data"]["application"]
                    assert attributes["account"]["id"] == event["data"]["account_id"]
            accounts = {
                r.event["data"]["account_id"]
                for r in receiver.verified()
                if r.event["event_type"] == "account.created"
            }
            assert {e["data"]["account_id"] for e in job_events()} <= accounts

    run(scenario())


def test_redeliveries_repeat_the_event_exactly() -> None:
    async def scenario() -> None:
        async with delivering(small_workspace(), redeliver_share=1.0) as (sim, receiver):
            await settled(sim, 3)
            assert stats(sim)["redelivered"] == 3
            assert stats(sim)["sent"] == 6
            by_event: dict[str, list[Received]] = {}
            for received in receiver.received:
                by_event.setdefault(received.event_id, []).append(received)
            assert len(by_event) == 3
            for copies in by_event.values():
                first, again = copies
                assert again.body == first.body
                assert again.headers["X-Cerby-Delivery"] == first.headers["X-Cerby-Delivery"]
                assert (first.headers["X-Cerby-Attempt"], again.headers["X-Cerby-Attempt"]) == (
                    "1",
                    "2",
                )
                assert first.verified
                assert again.verified

    run(scenario())


def test_bad_signatures_fail_verification() -> None:
    async def scenario() -> None:
        jobs = finished_jobs(12)
        async with delivering(jobs, bad_signature_share=0.5, seed=3) as (sim, receiver):
            await settled(sim, 12)
            forged = [r for r in receiver.received if not r.verified]
            assert 0 < len(forged) < 12
            assert stats(sim)["bad_signature"] == len(forged)
            assert stats(sim)["bad_signature_answers"] == {"401": len(forged)}
            assert stats(sim)["delivered"] == 12
            # Every forgery comes just before the genuine delivery of its event.
            for n, received in enumerate(receiver.received):
                if not received.verified:
                    genuine = receiver.received[n + 1]
                    assert genuine.verified
                    assert genuine.body == received.body
            assert len({r.event_id for r in receiver.verified()}) == 12

    run(scenario())


def test_all_or_no_signatures_bad() -> None:
    async def scenario(share: float, forgeries: int) -> None:
        async with delivering(finished_jobs(4), bad_signature_share=share) as (sim, receiver):
            await settled(sim, 4)
            assert len([r for r in receiver.received if not r.verified]) == forgeries
            assert len(receiver.verified()) == 4

    run(scenario(1.0, 4))
    run(scenario(0.0, 0))


def test_events_come_out_of_order_within_the_window() -> None:
    async def scenario() -> None:
        async with delivering(finished_jobs(12), shuffle=6, seed=1) as (sim, receiver):
            await settled(sim, 12)
            order = [r.event["data"]["automation_job_id"] for r in receiver.received]
            assert sorted(order) == sorted(set(order))
            assert len(order) == 12
            assert order != list(finished_jobs(12))
            assert stats(sim)["out_of_order"] > 0

    run(scenario())


@pytest.mark.parametrize("status", [408, 429, 503])
def test_busy_answers_are_retried_after_retry_after(status: int) -> None:
    def busy_once(received: Received) -> web.StreamResponse:
        if received.headers["X-Cerby-Attempt"] == "1":
            # A Cerby second is a third of a second here; the plain schedule would wait 20 s.
            return web.json_response({}, status=status, headers={"Retry-After": "1"})
        return accept(received)

    async def scenario() -> None:
        jobs = finished_jobs(1)
        async with delivering(jobs, busy_once, retry_base=20.0) as (sim, receiver):
            await settled(sim, 1)
            first, again = receiver.received
            assert again.body == first.body
            assert again.headers["X-Cerby-Delivery"] == first.headers["X-Cerby-Delivery"]
            assert again.headers["X-Cerby-Attempt"] == "2"
            assert again.verified
            assert stats(sim)["retried"] == 1
            assert stats(sim)["answers"] == {str(status): 1, "200": 1}

    run(scenario())


def test_server_errors_are_retried() -> None:
    def failing_twice(received: Received) -> web.StreamResponse:
        if received.headers["X-Cerby-Attempt"] in ("1", "2"):
            return web.json_response({}, status=500)
        return accept(received)

    async def scenario() -> None:
        async with delivering(finished_jobs(1), failing_twice) as (sim, receiver):
            await settled(sim, 1)
            attempts = [r.headers["X-Cerby-Attempt"] for r in receiver.received]
            assert attempts == ["1", "2", "3"]
            assert stats(sim)["answers"] == {"500": 2, "200": 1}
            assert stats(sim)["delivered"] == 1

    run(scenario())


def test_other_client_errors_are_dead_lettered() -> None:
    async def scenario() -> None:
        def reject(_received: Received) -> web.StreamResponse:
            return web.json_response({}, status=400)

        async with delivering(finished_jobs(1), reject) as (sim, receiver):
            await settled(sim, 1)
            assert len(receiver.received) == 1
            assert stats(sim)["dead_lettered"] == 1
            assert stats(sim)["retried"] == 0
            assert stats(sim)["answers"] == {"400": 1}

    run(scenario())


def test_an_unreachable_receiver_is_tried_six_times() -> None:
    async def refused() -> None:
        key = Ed25519PrivateKey.generate()
        # A port that refuses: the receiver's, once it has stopped listening.
        runner, url = await listening(Receiver(verifier("ed25519", key.public_key())))
        await runner.cleanup()
        delivery = WebhookDelivery(url, KEY_ID, key, **{**FAST, "retry_base": 0.002})
        sim = await Simulator(Workspace(finished_jobs(1), API_KEY), webhooks=delivery).serve()
        try:
            await settled(sim, 1)
            assert stats(sim)["answers"] == {"error": 6}
            assert stats(sim)["retried"] == 5
            assert stats(sim)["gave_up"] == 1
        finally:
            await sim.close()

    run(refused())


def test_control_api_emits_events_now() -> None:
    async def scenario() -> None:
        async with delivering({FINISHED: small_workspace()[FINISHED]}) as (sim, receiver):
            await settled(sim, 2)
            control = sim.base_url.removesuffix("/api/v1") + "/_sim/events"
            async with httpx.AsyncClient() as client:
                answer = await client.post(control, json={"job_id": FINISHED})
                assert answer.status_code == 200
                event_ids = answer.json()["event_ids"]
                assert len(event_ids) == 2
                account = await client.post(control, json={})
                assert (await client.post(control, json={"job_id": RUNNING})).status_code == 404
            await settled(sim, 5)
            arrived = {r.event_id: r.event for r in receiver.verified()}
            assert {arrived[event_id]["data"]["automation_job_id"] for event_id in event_ids} == {
                FINISHED
            }
            (created,) = account.json()["event_ids"]
            assert arrived[created]["event_type"] == "account.created"
            assert "automation_job_id" not in arrived[created]["data"]

    run(scenario())


def test_without_delivery_there_are_no_webhooks(simulator: Simulator) -> None:
    control = simulator.base_url.removesuffix("/api/v1")
    assert httpx.get(control + "/_sim/stats").json()["webhooks"] is None
    assert httpx.post(control + "/_sim/events", json={}).status_code == 409


def test_delivery_starts_from_another_thread(simulator: Simulator) -> None:
    """As with `start()`: the simulator on a loop of its own, told where to deliver later."""

    async def scenario() -> None:
        key = Ed25519PrivateKey.generate()
        receiver = Receiver(verifier("ed25519", key.public_key()))
        runner, url = await listening(receiver)
        try:
            delivery = WebhookDelivery(url, KEY_ID, key, **FAST)
            await asyncio.to_thread(simulator.deliver_to, delivery)
            with pytest.raises(RuntimeError):
                simulator.deliver_to(delivery)
            await until(lambda: len(receiver.verified()) == 3)
            assert receiver.event_types()["automation.failed"] == 1
        finally:
            await runner.cleanup()

    run(scenario())


def test_a_simulator_process_delivers(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "key.pem").write_bytes(pem)
    finished = str(uuid.UUID(int=1 << 64))

    async def scenario() -> None:
        receiver = Receiver(verifier("ed25519", key.public_key()))
        runner, url = await listening(receiver)
        args = [
            "--scenario=bulk",
            "--jobs=2",
            f"--webhook-url={url}",
            f"--webhook-key-file={tmp_path / 'key.pem'}",
            f"--webhook-key-id={KEY_ID}",
        ]
        try:
            with await asyncio.to_thread(SimulatorProcess, args) as process:

                def arrived() -> bool:
                    return any(
                        r.event["data"].get("automation_job_id") == finished
                        for r in receiver.verified()
                    )

                await until(arrived)
                webhooks = (await asyncio.to_thread(process.stats))["webhooks"]
                assert isinstance(webhooks, dict)
                assert webhooks["sent"] >= 1
        finally:
            await runner.cleanup()

    run(scenario())


def test_retry_after_is_scaled_and_clamped() -> None:
    assert retry_after_delay("120", 1.0) == 2.0
    assert retry_after_delay("120", 60.0) == 120.0
    assert retry_after_delay("999999", 1.0) == 60.0
    assert retry_after_delay("-5", 1.0) == 0.0
    assert retry_after_delay("soon", 1.0) is None
    assert retry_after_delay(None, 1.0) is None
    assert retry_after_delay(formatdate(time.time() - 60, usegmt=True), 1.0) == 0.0
