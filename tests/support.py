"""What several test modules share: a small simulated workspace and a running exporter."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cerby_exporter import logs
from cerby_exporter.app import EXPORTER, create_app, start_server
from cerby_exporter.settings import Settings
from cerby_exporter.signatures import KeysSource, sign
from cerby_exporter.simulator import SimJob, Simulator
from cerby_exporter.state import StateStore
from cerby_exporter.webconfig import WebConfigSource

T = TypeVar("T")

API_KEY = "test-key-5f0e3c2a9b"
FINISHED = "11111111-2222-3333-4444-555555555555"
RUNNING = "22222222-3333-4444-5555-666666666666"
FAILED = "33333333-4444-5555-6666-777777777777"
MISSING = "44444444-5555-6666-7777-888888888888"


def job_attributes(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "account": {"entity": "account", "id": "aaaaaaaa-0000-0000-0000-000000000001"},
        "canRetry": True,
        "createdAt": "2024-09-05T20:46:14.357000",
        "updatedAt": "2024-09-05T20:47:14.357000",
        "createdBy": {"id": "bbbbbbbb-0000-0000-0000-000000000001", "name": "Dana Example"},
        "errorDetails": {},
        "hasMoreDetails": False,
        "status": "finished",
        "trigger": "manual",
        "workflowType": "password_rotation",
    }
    base["account"] = {**base["account"], "name": "Brand One", "provider": "twitter"}
    base.update(changes)
    return base


def small_workspace() -> dict[str, SimJob]:
    """Three jobs: one finished, one running, one failed that needs a person."""
    return {
        FINISHED: SimJob([(0.0, job_attributes())]),
        RUNNING: SimJob([(0.0, job_attributes(status="running", workflowType="setup_mfa"))]),
        FAILED: SimJob(
            [
                (
                    0.0,
                    job_attributes(
                        status="error",
                        canRetry=False,
                        trigger="user_deprovisioned",
                        workflowType="revoke_access",
                        errorDetails={"errorType": "login_failed", "userRequired": True},
                    ),
                )
            ]
        ),
    }


class Running:
    """An exporter serving on a real loopback socket, on an event loop of its own in a thread,
    and what it logged."""

    def __init__(self, app: web.Application, web_config: WebConfigSource | None = None) -> None:
        self.app = app
        self.exporter = app[EXPORTER]
        self.log = io.StringIO()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ssl = web_config.ssl_context() if web_config is not None else None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner, self.port = self.call(start_server(app, "127.0.0.1", 0, self._ssl))

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)

    def call(self, work: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run `work` on the exporter's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop as on SIGTERM: no new connections, requests in flight answered, then closed."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self.call(runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def start_exporter(
    settings: Settings,
    web_config: WebConfigSource | None = None,
    *,
    state: StateStore | None = None,
    keys: KeysSource | None = None,
) -> Running:
    """An exporter in this process; with `keys`, its webhook receiver on (it needs `state`)."""
    redactor = logs.Redactor()
    stream = io.StringIO()
    logs.configure("debug", "logfmt", redactor, stream)
    app = create_app(settings, redactor, state, web_config=web_config, keys=keys)
    running = Running(app, web_config)
    running.log = stream
    return running


@dataclass
class WebhookKeys:
    """Signing keys made for a test, in a keys file the receiver reads: an ed25519 key (Cerby's
    usual) and an HMAC secret."""

    path: Path
    ed25519_id: str = "6f1c2d3e-0000-4000-8000-000000000001"
    hmac_id: str = "0b2e4f6a-0000-4000-8000-000000000002"
    private_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def write(self, *, with_ed25519: bool = True, with_hmac: bool = True) -> WebhookKeys:
        public = self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        entries = []
        if with_ed25519:
            entries.append(
                f"  - id: {self.ed25519_id}\n    algorithm: ed25519\n"
                f"    public_key: {base64.b64encode(public).decode()}\n"
            )
        if with_hmac:
            entries.append(
                f"  - id: {self.hmac_id}\n    algorithm: hmac-sha256\n    secret: {self.secret}\n"
            )
        self.path.write_text("keys:\n" + "".join(entries) if entries else "keys: []\n")
        return self

    def headers(
        self,
        body: bytes,
        *,
        algorithm: str = "ed25519",
        at: float | None = None,
        form: str = "header",
    ) -> dict[str, str]:
        key: Ed25519PrivateKey | str = self.private_key if algorithm == "ed25519" else self.secret
        key_id = self.ed25519_id if algorithm == "ed25519" else self.hmac_id
        when = time.time() if at is None else at
        return {
            **sign(body, key_id, key, algorithm, when, form),
            "Content-Type": "application/json",
        }


def envelope(
    job_id: str | None,
    *,
    event_type: str = "automation.failed",
    event_id: str | None = None,
    application: str = "tiktok",
    error_code: str | None = "BadCredentials",
) -> bytes:
    """A Cerby event envelope, as `shared/cerby-api.md` shows one."""
    document: dict[str, Any] = {
        "envelope_version": "1.0",
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": "2026-12-01T20:41:02.871Z",
        "workspace_id": "5a0c9e2b-1f3d-4c6a-8e7b-2d9f0a1b3c4d",
        "data": {"application": application, "action": "revoke_access"},
        "trace_id": None,
        "correlation_id": None,
    }
    if job_id is not None:
        document["data"]["automation_job_id"] = job_id
    if error_code is not None:
        document["error"] = {"code": error_code, "message": "login failed", "user_action": "x"}
    return json.dumps(document).encode()


def settings_for(sim: Simulator, **values: Any) -> dict[str, Any]:
    return {
        "api_url": sim.base_url,
        "api_key": API_KEY,
        "job_ids": (FINISHED, RUNNING, FAILED, MISSING),
        **values,
    }
