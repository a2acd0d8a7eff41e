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
    GET /_sim/stats         {"requests", "by_job", "injected"}
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Final

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
    ) -> None:
        self._jobs = jobs
        self.api_key = api_key
        self._clock = clock
        self.started = clock()
        self.faults = Faults()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.by_job: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.stopping = threading.Event()

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    workspace: ClassVar[Workspace]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the exporter's logs, not the simulator's."""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in one write, but a client's next request must not wait on
        # Nagle's algorithm meeting a delayed ACK either.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_sim/stats":
            self._json(200, self.workspace.stats())
            return
        match = _JOB_PATH.fullmatch(path)
        if match is None:
            self._json(404, error_document(404, "no such endpoint"))
            return
        self._job(match.group(1))

    def do_PUT(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            body = self._read_json()
            if path == "/_sim/faults":
                self.workspace.set_faults(Faults.from_json(body))
            elif path == "/_sim/key":
                self.workspace.api_key = str(body["key"])
            elif (match := _SIM_JOB_PATH.fullmatch(path)) is not None:
                self.workspace.set_job(match.group(1), body)
            else:
                self._json(404, error_document(404, "no such endpoint"))
                return
        except (ValueError, KeyError, TypeError) as exc:
            self._json(400, error_document(400, str(exc)))
            return
        self._json(200, {"ok": True})

    def do_DELETE(self) -> None:
        match = _SIM_JOB_PATH.fullmatch(self.path.split("?", 1)[0])
        if match is None:
            self._json(404, error_document(404, "no such endpoint"))
            return
        self.workspace.delete_job(match.group(1))
        self._json(200, {"ok": True})

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    def _job(self, job_id: str) -> None:
        workspace = self.workspace
        faults, kind = workspace.record(job_id)
        if faults.latency > 0:
            workspace.stopping.wait(faults.latency)
        if self.headers.get("X-API-Key") != workspace.api_key:
            self._json(401, error_document(401, "invalid, expired or deleted API key"))
            return
        if kind is not None and kind.startswith("status_"):
            workspace.applied(kind)
            status = int(kind.removeprefix("status_"))
            extra = [("Retry-After", faults.retry_after)] if faults.retry_after else []
            self._json(status, error_document(status, "injected"), extra)
            return
        if kind == "hang":
            workspace.applied(kind)
            workspace.stopping.wait(60)
            self.close_connection = True
            return
        if kind == "reset":
            workspace.applied(kind)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        attributes = workspace.job_attributes(job_id)
        if attributes is None:
            self._json(404, error_document(404, f"job {job_id} not found"))
            return
        self._job_answer(job_id, attributes, kind)

    def _job_answer(self, job_id: str, attributes: Attributes, kind: str | None) -> None:
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
            content_type = "text/html; charset=utf-8"
            body = b"<html><body>Service temporarily unavailable</body></html>"
        elif kind == "oversize":
            padding = "x" * (2 * 1024 * 1024)
            body = json.dumps(job_document(job_id, {**attributes, "padding": padding})).encode()
        elif kind == "truncated":
            self._send(200, body[: len(body) // 2], content_type, length=len(body))
            self.close_connection = True
            return
        self._send(200, body, content_type)

    def _json(
        self, status: int, document: object, extra: list[tuple[str, str]] | None = None
    ) -> None:
        self._send(status, json.dumps(document).encode(), "application/json", extra=extra)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        length: int | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        reason = self.responses.get(status, ("",))[0]
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}"]
        head.append(f"Content-Length: {len(body) if length is None else length}")
        head.extend(f"{name}: {value}" for name, value in extra or [])
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up mid-answer is part of fault injection, not news."""


class Simulator:
    """The workspace behind a threaded HTTP server on loopback."""

    def __init__(self, workspace: Workspace, host: str = "127.0.0.1", port: int = 0) -> None:
        self.workspace = workspace
        handler = type("Handler", (_Handler,), {"workspace": workspace})
        self._server = _QuietServer((host, port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="cerby-simulator", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/api/v1"

    def start(self) -> Simulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.workspace.stopping.set()
        self._server.shutdown()
        self._server.server_close()

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


def demo_jobs() -> dict[str, SimJob]:
    """A score of jobs across workflow types, providers and triggers, moving over ~5 minutes.

    Some end in error with and without `canRetry`, one takes a status Cerby does not document,
    one stays running; `DEMO_MISSING_JOB` is tracked but absent, so it answers 404.
    """
    jobs: dict[str, SimJob] = {}
    for n, (workflow, provider, trigger, account, can_retry, steps, error) in enumerate(_DEMO):
        base: Attributes = {
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
    args = parser.parse_args(argv)
    jobs = scenario(args.scenario, args.jobs)
    if args.print_job_ids:
        ids: Iterator[str] = iter(demo_job_ids() if args.scenario == "demo" else jobs)
        print("\n".join(ids))
        return 0
    host, _, port = args.listen.rpartition(":")
    workspace = Workspace(jobs, args.api_key)
    workspace.set_faults(Faults(latency=args.latency))
    simulator = Simulator(workspace, host or "127.0.0.1", int(port))
    print(f"listening on {simulator.base_url}", flush=True)
    try:
        simulator.start()
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
    "Workspace",
    "asdict",
    "demo_job_ids",
    "demo_jobs",
]
