"""What several test modules share: a small simulated workspace and a running exporter."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import httpx

from cerby_exporter import logs
from cerby_exporter.app import App, create_app
from cerby_exporter.server import Server
from cerby_exporter.settings import Settings
from cerby_exporter.simulator import SimJob, Simulator

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


@dataclass
class Running:
    """An exporter serving on a real loopback socket, and what it logged."""

    app: App
    server: Server
    log: io.StringIO

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)


def start_exporter(settings: Settings) -> Running:
    redactor = logs.Redactor()
    stream = io.StringIO()
    logs.configure("debug", "logfmt", redactor, stream)
    app = create_app(settings, redactor)
    server = Server(app, "127.0.0.1", 0)
    server.start()
    return Running(app, server, stream)


def settings_for(sim: Simulator, **values: Any) -> dict[str, Any]:
    return {
        "api_url": sim.base_url,
        "api_key": API_KEY,
        "job_ids": (FINISHED, RUNNING, FAILED, MISSING),
        **values,
    }
