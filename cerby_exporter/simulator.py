"""A simulated Cerby workspace that speaks `GET /api/v1/jobs/{id}` over real HTTP.

It serves the documented envelope, checks `X-API-Key`, answers errors in Cerby's error-body shape,
and injects faults on demand: latency, a status code (401, 429, 5xx...), malformed, truncated or
oversize bodies, a wrong content type, nulls everywhere, unknown fields, hangs and connection
resets. The demo mode and the tests both use it, in process or as
`python -m cerby_exporter.simulator`.

A control API for tests from other processes, which needs no key:
    PUT /_sim/jobs/{id}     merge a JSON object into the job's attributes (creates the job)
    DELETE /_sim/jobs/{id}
    PUT /_sim/faults        {"latency", "status", "rate", "malformed", "fault", "retry_after",
                             "count"}
    PUT /_sim/key           {"key": "..."}
    GET /_sim/stats         {"requests", "by_job", "injected", "webhooks"}
    POST /_sim/events       {"job_id": "..."} sends that job's events now; {} an account.created

With webhook delivery configured (`Simulator(..., webhooks=...)` or `deliver_to()`), the
workspace also behaves as Cerby's webhooks do: see `simulator_webhooks`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cerby_exporter.simulator_webhooks import WebhookDelivery, WebhookFeed, failure_code

FAULTS: Final = (
    "malformed",
    "truncated",
    "oversize",
    "content_type",
    "nulls",
    "unknown_fields",
    "hang",
    "reset",
)
"""Body and connection faults; a status fault is set with `status` instead."""

_JOB_PATH: Final = re.compile(r"/api/v1/jobs/([^/?#]+)")
_SIM_JOB_PATH: Final = re.compile(r"/_sim/jobs/([^/?#]+)")
_TITLES: Final = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}

Attributes = dict[str, Any]


def iso(timestamp: float, shape: int = 0) -> str:
    """Cerby's timestamp shapes, as its documentation shows them."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    if shape == 1:
        return moment.strftime("%Y-%m-%dT%H:%M:%S")
    if shape == 2:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.isoformat(timespec="microseconds")


@dataclass
class SimJob:
    """A job whose attributes follow a timeline of (seconds after start, changes) steps."""

    timeline: list[tuple[float, Attributes]]
    overrides: Attributes = field(default_factory=dict)
    shape: int = 0

    def attributes(self, started: float, now: float) -> Attributes | None:
        """The job as of `now`, or None before its first step (it does not exist yet)."""
        elapsed = now - started
        if self.timeline and elapsed < self.timeline[0][0] and not self.overrides:
            return None
        merged: Attributes = {}
        last_change = started
        for offset, changes in self.timeline:
            if offset <= elapsed:
                merged.update(changes)
                last_change = started + offset
        first = started + (self.timeline[0][0] if self.timeline else 0.0)
        merged.setdefault("createdAt", iso(first, self.shape))
        merged.setdefault("updatedAt", iso(last_change, self.shape))
        merged.update(self.overrides)
        return merged


@dataclass
class Faults:
    latency: float = 0.0
    status: int | None = None
    rate: float = 1.0
    malformed: bool = False
    fault: str | None = None
    retry_after: str | None = None
    count: int | None = None
    """Apply to this many more requests, then stop; None for no limit."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Faults:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        faults = cls(**data)
        if faults.fault is not None and faults.fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        return faults


class Workspace:
    """The jobs, the key and the faults, shared by the request threads."""

    def __init__(
        self,
        jobs: dict[str, SimJob],
        api_key: str,
        *,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
        workspace_id: str | None = None,
    ) -> None:
        self._jobs = jobs
        self.api_key = api_key
        self.workspace_id = workspace_id or str(uuid.uuid5(DEMO_NAMESPACE, "workspace"))
        self._clock = clock
        self.started = clock()
        self.faults = Faults()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.by_job: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the simulator's server runs on; pauses end early when it stops."""
        self._loop = loop
        self._stopping = asyncio.Event()

    async def pause(self, seconds: float) -> None:
        """Wait `seconds` (latency, a hang), or less if the simulator stops meanwhile."""
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def stop(self) -> None:
        """Called on the simulator's loop."""
        if self._stopping is not None:
            self._stopping.set()

    def set_job(self, job_id: str, changes: Attributes) -> None:
        with self._lock:
            job = self._jobs.setdefault(job_id, SimJob([(0.0, {})]))
            job.overrides.update(changes)
            if "updatedAt" not in changes:
                job.overrides["updatedAt"] = iso(self._clock(), job.shape)

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults

    def job_attributes(self, job_id: str) -> Attributes | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.attributes(self.started, self._clock())

    def statuses(self) -> dict[str, Any]:
        """The status of every job that exists now, for the webhooks to see which ones ended."""
        with self._lock:
            now = self._clock()
            result = {}
            for job_id, job in self._jobs.items():
                attributes = job.attributes(self.started, now)
                if attributes is not None:
                    result[job_id] = attributes.get("status")
            return result

    def spawn_job(
        self, rand: random.Random, *, duration: float, fails: bool, new_account: bool
    ) -> tuple[str, Attributes]:
        """Start a job nobody configured, as policy rotations and deprovisionings do: created now,
        running a moment later, finished (or failed) within about `duration` seconds. Only its
        webhook tells an exporter it exists."""
        n = rand.randrange(len(_DEMO))
        workflow, provider, trigger, account, can_retry, _, _ = _DEMO[n]
        if new_account:
            account = f"Acme New {uuid.UUID(int=rand.getrandbits(128)).hex[:8]}"
        attributes = _demo_attributes(n, workflow, provider, trigger, account, can_retry)
        end: Attributes = {"status": "finished"}
        if fails:
            end = {
                "status": "error",
                "errorDetails": {
                    "errorType": failure_code(workflow),
                    "screenshotUrl": f"https://example.invalid/screenshots/{n}.png",
                    "userRequired": not can_retry,
                },
                "hasMoreDetails": True,
            }
        start = self._clock() - self.started
        job = SimJob(
            [
                (start, {**attributes, "status": "created"}),
                (start + 0.2 * duration, {"status": "running"}),
                (start + rand.uniform(0.5, 1.5) * duration, end),
            ],
            shape=n % 3,
        )
        job_id = str(uuid.UUID(int=rand.getrandbits(128), version=4))
        with self._lock:
            self._jobs[job_id] = job
        return job_id, attributes

    def record(self, job_id: str) -> tuple[Faults, str | None]:
        """Count a request and decide which fault, if any, it gets."""
        with self._lock:
            self.requests += 1
            self.by_job[job_id] += 1
            faults = self.faults
            kind = None
            if faults.status is not None:
                kind = f"status_{faults.status}"
            elif faults.malformed:
                kind = "malformed"
            elif faults.fault is not None:
                kind = faults.fault
            if kind is not None and faults.count is not None and faults.count <= 0:
                kind = None
            if kind is not None and self._random.random() >= faults.rate:
                kind = None
            if kind is not None and faults.count is not None:
                faults.count -= 1
            return faults, kind

    def applied(self, kind: str) -> None:
        """Count a fault that reached the client: not one a 401 or 404 answered instead."""
        with self._lock:
            self.injected[kind] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "by_job": dict(self.by_job),
                "injected": dict(self.injected),
            }


def job_document(job_id: str, attributes: Attributes) -> dict[str, Any]:
    return {
        "data": {"id": job_id, "type": "job", "attributes": attributes},
        "links": {"self": f"/api/v1/jobs/{job_id}"},
        "meta": {},
    }


def error_document(status: int, detail: str) -> dict[str, Any]:
    title = _TITLES.get(status, "Error")
    return {
        "errors": [
            {
                "code": title.lower().replace(" ", "_"),
                "detail": detail,
                "meta": {},
                "status": str(status),
                "title": title,
            }
        ]
    }


def _json(status: int, document: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document).encode(),
        content_type="application/json",
        headers=headers,
    )


def _not_found() -> web.Response:
    return _json(404, error_document(404, "no such endpoint"))


class _Routes:
    """The API as Cerby answers it, and the control API the tests use."""

    def __init__(self, workspace: Workspace, webhooks: Callable[[], WebhookFeed | None]) -> None:
        self.workspace = workspace
        self.webhooks = webhooks

    async def stats(self, _request: web.Request) -> web.Response:
        feed = self.webhooks()
        webhooks = None if feed is None else feed.stats()
        return _json(200, {**self.workspace.stats(), "webhooks": webhooks})

    async def events(self, request: web.Request) -> web.Response:
        feed = self.webhooks()
        if feed is None:
            return _json(409, error_document(409, "webhook delivery is not configured"))
        try:
            body = await _read_json(request)
        except ValueError as exc:
            return _json(400, error_document(400, str(exc)))
        job_id = body.get("job_id")
        try:
            event_ids = feed.emit(None if job_id is None else str(job_id))
        except KeyError:
            return _json(404, error_document(404, f"job {job_id} not found"))
        return _json(200, {"event_ids": event_ids})

    async def put(self, request: web.Request) -> web.Response:
        path = request.path
        try:
            body = await _read_json(request)
            if path == "/_sim/faults":
                self.workspace.set_faults(Faults.from_json(body))
            elif path == "/_sim/key":
                self.workspace.api_key = str(body["key"])
            elif (match := _SIM_JOB_PATH.fullmatch(path)) is not None:
                self.workspace.set_job(match.group(1), body)
            else:
                return _not_found()
        except (ValueError, KeyError, TypeError) as exc:
            return _json(400, error_document(400, str(exc)))
        return _json(200, {"ok": True})

    async def delete(self, request: web.Request) -> web.Response:
        match = _SIM_JOB_PATH.fullmatch(request.path)
        if match is None:
            return _not_found()
        self.workspace.delete_job(match.group(1))
        return _json(200, {"ok": True})

    async def job(self, request: web.Request) -> web.StreamResponse:
        match = _JOB_PATH.fullmatch(request.path)
        if match is None:
            return _not_found()
        job_id = match.group(1)
        workspace = self.workspace
        faults, kind = workspace.record(job_id)
        if faults.latency > 0:
            await workspace.pause(faults.latency)
        if request.headers.get("X-API-Key") != workspace.api_key:
            return _json(401, error_document(401, "invalid, expired or deleted API key"))
        if kind is not None and kind.startswith("status_"):
            workspace.applied(kind)
            status = int(kind.removeprefix("status_"))
            extra = {"Retry-After": faults.retry_after} if faults.retry_after else None
            return _json(status, error_document(status, "injected"), extra)
        if kind == "hang":
            workspace.applied(kind)
            await workspace.pause(60)
            _drop(request, reset=False)
            return web.Response()
        if kind == "reset":
            workspace.applied(kind)
            _drop(request, reset=True)
            return web.Response()
        attributes = workspace.job_attributes(job_id)
        if attributes is None:
            return _json(404, error_document(404, f"job {job_id} not found"))
        return await self._job_answer(request, job_id, attributes, kind)

    async def _job_answer(
        self, request: web.Request, job_id: str, attributes: Attributes, kind: str | None
    ) -> web.StreamResponse:
        if kind is not None:
            self.workspace.applied(kind)
        if kind == "nulls":
            attributes = dict.fromkeys(attributes)
        if kind == "unknown_fields":
            attributes = {**attributes, "futureField": {"nested": [1, 2]}, "status": "paused"}
        body = json.dumps(job_document(job_id, attributes)).encode()
        content_type = "application/json"
        if kind == "malformed":
            body = b'{"data": {"id": "' + job_id.encode() + b'", "attributes": {'
        elif kind == "content_type":
            content_type = "text/html"
            body = b"<html><body>Service temporarily unavailable</body></html>"
        elif kind == "oversize":
            padding = "x" * (2 * 1024 * 1024)
            body = json.dumps(job_document(job_id, {**attributes, "padding": padding})).encode()
        elif kind == "truncated":
            response = web.StreamResponse(headers={"Content-Type": content_type})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            _drop(request, reset=False)
            return response
        return web.Response(body=body, content_type=content_type)


async def _read_json(request: web.Request) -> dict[str, Any]:
    data = json.loads(await request.read() or b"{}")
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def _drop(request: web.Request, *, reset: bool) -> None:
    """End the connection without an answer; with `reset`, as a TCP reset (RST)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if reset and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort() if reset else transport.close()


def simulator_app(
    workspace: Workspace, webhooks: Callable[[], WebhookFeed | None] = lambda: None
) -> web.Application:
    """`webhooks` answers the feed delivering the workspace's events, once there is one."""
    routes = _Routes(workspace, webhooks)
    app = web.Application()
    app.router.add_get("/_sim/stats", routes.stats)
    app.router.add_post("/_sim/events", routes.events)
    app.router.add_put("/_sim/{tail:.*}", routes.put)
    app.router.add_delete("/_sim/{tail:.*}", routes.delete)
    app.router.add_get("/{tail:.*}", routes.job)
    return app


class Simulator:
    """The workspace served on loopback by aiohttp.

    On the caller's event loop (`await serve()`, as the demo does, one loop for everything), or
    on a loop of its own in a thread (`start()`, for tests and `python -m`). With `webhooks`, or
    after `deliver_to()`, it also delivers the workspace's events, on the same loop.
    """

    def __init__(
        self,
        workspace: Workspace,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        webhooks: WebhookDelivery | None = None,
    ) -> None:
        self.workspace = workspace
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delivery = webhooks
        self.webhooks: WebhookFeed | None = None
        """The feed delivering events, while it runs; read it on the simulator's loop."""

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}/api/v1"

    async def serve(self) -> Simulator:
        """Start serving on the running loop."""
        self._loop = asyncio.get_running_loop()
        self.workspace.bind_loop(self._loop)
        app = simulator_app(self.workspace, lambda: self.webhooks)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._port = site.port
        self._runner = runner
        if self._delivery is not None:
            self._start_webhooks(self._delivery)
        return self

    def deliver_to(self, delivery: WebhookDelivery) -> None:
        """Deliver the workspace's webhooks as `delivery` says, from now on (or from `serve()`).

        For the demo, whose receiver listens only after the simulator does. Call it on the
        simulator's loop, or from another thread when it runs on a loop of its own (`start()`);
        once per simulator.
        """
        if self._delivery is not None:
            raise RuntimeError("webhook delivery is already configured")
        self._delivery = delivery
        loop = self._loop
        if self._runner is None or loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._start_webhooks(delivery)
            return

        async def start_there() -> None:
            self._start_webhooks(delivery)

        asyncio.run_coroutine_threadsafe(start_there(), loop).result(10)

    def _start_webhooks(self, delivery: WebhookDelivery) -> None:
        feed = WebhookFeed(self.workspace, delivery)
        feed.start()
        self.webhooks = feed

    async def close(self) -> None:
        self.workspace.stop()
        if self.webhooks is not None:
            feed, self.webhooks = self.webhooks, None
            await feed.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> Simulator:
        """Serve on a loop of its own, in a thread; returns once it listens."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:  # reported to the caller of start()
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.close())
            loop.close()

        self._thread = threading.Thread(target=run, name="cerby-simulator", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DEMO_NAMESPACE: Final = uuid.UUID("8d3c2f4e-5b1a-4c7e-9f60-2a1b3c4d5e6f")


def demo_job_id(n: int) -> str:
    """Stable IDs, so a demo restarted keeps its series."""
    return str(uuid.uuid5(DEMO_NAMESPACE, f"demo-job-{n}"))


# (workflow type, provider, trigger, account, can retry, [(seconds, status)...], error type)
_DEMO: Final[tuple[tuple[str, str, str, str, bool | None, str, str | None], ...]] = (
    (
        "password_rotation",
        "twitter",
        "workspace_policy",
        "Acme Social",
        True,
        "0 c,5 s,12 r,40 f",
        None,
    ),
    (
        "password_rotation",
        "instagram",
        "workspace_policy",
        "Acme Brand",
        True,
        "0 c,20 s,30 r,75 f",
        None,
    ),
    (
        "password_rotation",
        "facebook",
        "manual",
        "Acme Events",
        True,
        "10 c,15 s,25 r,50 y,90 e",
        "login_failed",
    ),
    ("setup_mfa", "twitter", "manual", "Acme Support", False, "0 c,30 s,45 r,100 f", None),
    (
        "setup_mfa",
        "tiktok",
        "workspace_policy",
        "Acme Video",
        False,
        "5 c,40 s,60 r,130 e",
        "mfa_challenge_unsupported",
    ),
    ("disable_mfa", "linkedin", "manual", "Acme Careers", True, "0 c,10 s,20 r,35 f", None),
    ("email_swap_in", "instagram", "manual", "Acme Shop", True, "20 c,50 s,70 r,150 f", None),
    ("phone_swap_in", "twitter", "manual", "Acme News", None, "30 c,60 s,80 r,170 f", None),
    ("healthcheck_mfa", "youtube", "system", "Acme Channel", True, "0 c,5 f", None),
    ("healthcheck_mfa", "facebook", "system", "Acme Events", True, "60 c,65 s,70 r,200 f", None),
    ("get_business", "discord_tenant", "system", "Acme Community", True, "0 c,10 r,25 f", None),
    ("provide_access", "discord_tenant", "manual", "Acme Community", True, "15 c,30 r,90 f", None),
    ("update_access", "meta_business", "manual", "Acme Ads", True, "40 c,80 r,140 y,220 f", None),
    (
        "revoke_access",
        "meta_business",
        "user_deprovisioned",
        "Acme Ads",
        False,
        "30 c,60 s,90 r,160 e",
        "user_not_found",
    ),
    (
        "revoke_access",
        "discord_tenant",
        "user_deprovisioned",
        "Acme Community",
        True,
        "0 c,20 r,45 f",
        None,
    ),
    (
        "get_native_partner_business",
        "meta_business",
        "system",
        "Acme Partners",
        True,
        "0 c,10 r,30 f",
        None,
    ),
    (
        "provide_native_partner_access",
        "meta_business",
        "manual",
        "Acme Partners",
        True,
        "50 c,90 r,300 f",
        None,
    ),
    (
        "revoke_native_partner_access",
        "meta_business",
        "manual",
        "Acme Partners",
        True,
        "20 c,40 r,120 y,180 e",
        "timeout_waiting_for_page",
    ),
    (
        "proxy_account_roles_update",
        "discord_tenant",
        "manual",
        "Acme Community",
        False,
        "0 paused,240 f",
        None,
    ),
    ("password_rotation", "twitter", "workspace_policy", "Acme Stuck", True, "0 c,10 s,20 r", None),
)
_DEMO_STATUS: Final = {
    "c": "created",
    "s": "started",
    "r": "running",
    "y": "retrying",
    "f": "finished",
    "e": "error",
}
DEMO_MISSING_JOB: Final = demo_job_id(len(_DEMO))
"""Tracked by the demo but unknown to the workspace: it answers 404."""


def _demo_attributes(
    n: int, workflow: str, provider: str, trigger: str, account: str, can_retry: bool | None
) -> Attributes:
    return {
        "account": {
            "entity": "account",
            "id": str(uuid.uuid5(DEMO_NAMESPACE, account)),
            "name": account,
            "provider": provider,
        },
        "canRetry": can_retry,
        "createdBy": {
            "id": str(uuid.uuid5(DEMO_NAMESPACE, f"user-{n % 4}")),
            "name": f"Demo User {n % 4}",
        },
        "errorDetails": {},
        "hasMoreDetails": False,
        "payload": {},
        "response": {},
        "trigger": trigger,
        "workflowType": workflow,
        "workspacePolicyEnforcementId": None,
    }


def demo_jobs() -> dict[str, SimJob]:
    """A score of jobs across workflow types, providers and triggers, moving over ~5 minutes.

    Some end in error with and without `canRetry`, one takes a status Cerby does not document,
    one stays running; `DEMO_MISSING_JOB` is tracked but absent, so it answers 404.
    """
    jobs: dict[str, SimJob] = {}
    for n, (workflow, provider, trigger, account, can_retry, steps, error) in enumerate(_DEMO):
        base = _demo_attributes(n, workflow, provider, trigger, account, can_retry)
        # Every demo job exists from the start, queued; the steps move it along later.
        timeline: list[tuple[float, Attributes]] = [(0.0, {**base, "status": "created"})]
        for step in steps.split(","):
            offset_text, code = step.split()
            changes: Attributes = {"status": _DEMO_STATUS.get(code, code)}
            if code == "e":
                changes["errorDetails"] = {
                    "errorType": error,
                    "screenshotUrl": f"https://example.invalid/screenshots/{n}.png",
                    "userRequired": not can_retry,
                }
                changes["hasMoreDetails"] = True
            timeline.append((float(offset_text), changes))
        jobs[demo_job_id(n)] = SimJob(timeline, shape=n % 3)
    return jobs


def demo_job_ids() -> tuple[str, ...]:
    return (*demo_jobs(), DEMO_MISSING_JOB)


def bulk_jobs(count: int, terminal_share: float = 0.5) -> dict[str, SimJob]:
    """`count` static jobs for load tests; the first `terminal_share` of them finished."""
    workflows = [row[0] for row in _DEMO]
    providers = [row[1] for row in _DEMO]
    jobs = {}
    for n in range(count):
        status = "finished" if n < count * terminal_share else "running"
        attributes: Attributes = {
            "account": {
                "id": str(uuid.UUID(int=n + 1)),
                "name": f"Account {n}",
                "provider": providers[n % len(providers)],
            },
            "canRetry": n % 2 == 0,
            "status": status,
            "trigger": "workspace_policy",
            "workflowType": workflows[n % len(workflows)],
        }
        jobs[str(uuid.UUID(int=(1 << 64) + n))] = SimJob([(0.0, attributes)])
    return jobs


def scenario(name: str, jobs: int) -> dict[str, SimJob]:
    if name == "demo":
        return demo_jobs()
    if name == "bulk":
        return bulk_jobs(jobs)
    return {}


DEMO_WEBHOOK_KEY_ID: Final = str(uuid.uuid5(DEMO_NAMESPACE, "webhook-signing-key"))


def _ed25519_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit("--webhook-key-file must hold an Ed25519 private key")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cerby_exporter.simulator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (default: a free port)")
    parser.add_argument("--api-key", default="demo-key", help="the key clients must send")
    parser.add_argument("--scenario", choices=("demo", "bulk", "empty"), default="demo")
    parser.add_argument("--jobs", type=int, default=1000, help="how many jobs `bulk` makes")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument("--print-job-ids", action="store_true", help="list the job IDs and exit")
    parser.add_argument("--webhook-url", help="deliver the workspace's webhooks to this URL")
    parser.add_argument(
        "--webhook-key-file", type=Path, help="PEM (PKCS#8) Ed25519 private key signing them"
    )
    parser.add_argument(
        "--webhook-key-id", default=DEMO_WEBHOOK_KEY_ID, help="the signing key's ID (a UUID)"
    )
    parser.add_argument(
        "--new-job-every", type=float, help="seconds between jobs the workspace starts itself"
    )
    args = parser.parse_args(argv)
    webhooks = None
    if args.webhook_url is not None:
        if args.webhook_key_file is None:
            parser.error("--webhook-url needs --webhook-key-file")
        key = _ed25519_private_key(args.webhook_key_file.read_bytes())
        webhooks = WebhookDelivery(
            args.webhook_url, args.webhook_key_id, key, new_job_every=args.new_job_every
        )
    jobs = scenario(args.scenario, args.jobs)
    if args.print_job_ids:
        ids: Iterator[str] = iter(demo_job_ids() if args.scenario == "demo" else jobs)
        print("\n".join(ids))
        return 0
    host, _, port = args.listen.rpartition(":")
    workspace = Workspace(jobs, args.api_key)
    workspace.set_faults(Faults(latency=args.latency))
    simulator = Simulator(workspace, host or "127.0.0.1", int(port), webhooks=webhooks)
    try:
        simulator.start()
        print(f"listening on {simulator.base_url}", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DEMO_MISSING_JOB",
    "FAULTS",
    "Faults",
    "SimJob",
    "Simulator",
    "WebhookDelivery",
    "Workspace",
    "demo_job_ids",
    "demo_jobs",
]
