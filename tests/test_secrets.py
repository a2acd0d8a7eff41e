"""The API key never leaves the process except in the `X-API-Key` header to the configured host.

A full run in a subprocess with debug logging, through faults, a 429, a refused key and a key
rotation; then every byte it printed and every page it served is searched for either key.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web

from cerby_exporter import settings as settings_module
from cerby_exporter.app import start_server
from cerby_exporter.settings import Settings, effective
from cerby_exporter.simulator import Faults, Simulator, Workspace
from tests.support import (
    FAILED,
    FINISHED,
    MISSING,
    RUNNING,
    ExporterProcess,
    clean_env,
    parse_samples,
    small_workspace,
    value,
)

T = TypeVar("T")

OLD_KEY = "ck_live_" + secrets.token_urlsafe(24)
NEW_KEY = "ck_live_" + secrets.token_urlsafe(24)


def leaks(text: str | bytes) -> list[str]:
    """Which key, or a recognisable piece or encoding of one, the text holds."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = []
    for key in (OLD_KEY, NEW_KEY):
        # The key's random part alone, and as a URL would carry it.
        for form in (key, key[8:], quote(key, safe=""), key[8:24]):
            if form in text:
                found.append(form)
    return found


def endpoint_bodies(url: str) -> list[bytes]:
    """Every page the exporter serves, in every form it serves it."""
    bodies = []
    with httpx.Client(timeout=15) as client:
        for path in (
            "/",
            "/metrics",
            f"/probe?target={FINISHED}",
            f"/probe?target={MISSING}",
            "/probe?target=bad",
            "/healthz",
            "/readyz",
            "/nope",
            "/metrics?" + "x" * 3000,
        ):
            bodies.append(client.get(url + path).content)
        bodies.append(
            client.get(
                url + "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0"}
            ).content
        )
        zipped = client.get(url + "/metrics", headers={"Accept-Encoding": "gzip"})
        bodies.append(zipped.content)  # httpx decodes gzip; keep the raw bytes too
        bodies.append(gzip.compress(zipped.content))
        bodies.append(client.post(url + "/metrics", content=b"x").content)
        bodies.append(str(dict(zipped.headers)).encode())
    return bodies


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(url + "/metrics", timeout=15)
    assert answer.status_code == 200
    return parse_samples(answer.text)


def test_a_full_run_never_shows_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(OLD_KEY + "\n")
    workspace = Workspace(small_workspace(), OLD_KEY)
    outputs: list[bytes] = []
    with Simulator(workspace) as simulator:
        args = [
            "--api-url",
            simulator.base_url,
            "--api-key-file",
            str(key_file),
            "--job-ids",
            ",".join((FINISHED, RUNNING, FAILED, MISSING)),
            "--cache-ttl",
            "0.1",
            "--terminal-cache-ttl",
            "0.1",
            "--request-timeout",
            "0.5",
            "--log.level",
            "debug",
        ]
        with ExporterProcess(args, tmp_path) as exporter:
            exporter.wait_ready()
            assert value(scrape(exporter.url), "cerby_up") == 1
            outputs += endpoint_bodies(exporter.url)
            for fault in (
                Faults(status=500),
                Faults(fault="malformed"),
                Faults(fault="reset"),
                Faults(fault="truncated"),
                Faults(fault="hang"),
                Faults(fault="content_type"),
                Faults(status=403),
                Faults(status=429, retry_after="1"),
            ):
                workspace.set_faults(fault)
                time.sleep(0.15)
                outputs.append(httpx.get(exporter.url + "/metrics", timeout=15).content)
            time.sleep(1.1)  # the back-off runs out
            workspace.set_faults(Faults())

            workspace.api_key = NEW_KEY  # the old key expired
            time.sleep(0.15)
            refused = scrape(exporter.url)
            assert value(refused, "cerby_up") == 0
            outputs += endpoint_bodies(exporter.url)

            key_file.write_text(NEW_KEY + "\n")  # rotated without a restart
            deadline = time.monotonic() + 10
            while value(scrape(exporter.url), "cerby_up") != 1:
                assert time.monotonic() < deadline, "the new key was not picked up"
                time.sleep(0.2)
            outputs += endpoint_bodies(exporter.url)
            assert exporter.terminate() == 0
        stdout, stderr = exporter.stdout(), exporter.stderr()

    assert "level=debug" in stderr  # debug logging was on, and wrote
    assert "Cerby refuses the API key (HTTP 403)" in stderr
    assert "Cerby refuses the API key (HTTP 401)" in stderr
    assert "new key in use" in stderr
    assert "rate limiting" in stderr
    assert leaks(stdout) == []
    assert leaks(stderr) == []
    for body in outputs:
        assert leaks(body) == []


def test_check_config_and_errors_never_show_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(OLD_KEY)
    url = ["--api-url", "https://acme.cerby.com/api/v1"]
    in_env = {"CERBY_API_KEY": OLD_KEY}
    runs: list[tuple[list[str], dict[str, str]]] = [
        ([*url, "--check-config"], in_env),
        ([*url, "--api-key-file", str(key_file), "--check-config"], {}),
        (["--cache-ttl", "-1", "--check-config"], in_env),
        (["--api-url", "ftp://x", "--check-config"], in_env),
        (["--check-config"], {**in_env, "CERBY_NO_SUCH": OLD_KEY}),
        (["--api-key", OLD_KEY], {}),
        ([*url, "--job-ids", "not-a-job", "--check-config"], in_env),
        ([*url, "--check-config"], {**in_env, "CERBY_API_KEY_FILE": f"{key_file}.missing"}),
    ]
    codes = []
    for args, env in runs:
        result = subprocess.run(
            [sys.executable, "-m", "cerby_exporter", *args],
            env=clean_env(env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        codes.append(result.returncode)
        assert leaks(result.stdout) == [], args
        assert leaks(result.stderr) == [], args
        if args[0] == "--api-key":
            assert "there is no --api-key flag" in result.stderr
        if result.returncode == 0:
            assert "api_key = <redacted>" in result.stdout or "api_key = \n" in result.stdout
    assert codes[:2] == [0, 0]
    assert all(code == 2 for code in codes[2:])


def test_settings_never_show_the_key(monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> None:
    monkeypatch.setenv("CERBY_API_KEY", OLD_KEY)
    settings = Settings(api_url="https://acme.cerby.com/api/v1")
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == OLD_KEY
    for text in (
        repr(settings),
        str(settings),
        repr(settings.api_key),
        str(settings.model_dump()),
        settings.model_dump_json(),
        str(effective(settings)),
        f"{settings!r} {settings.api_key}",
    ):
        assert leaks(text) == [], text
    with pytest.raises(settings_module.SettingsError) as caught:
        settings_module.load({"api_url": "https://acme.cerby.com/api/v1", "cache_ttl": OLD_KEY})
    assert leaks(str(caught.value)) == []


@dataclass
class RedirectingCerby:
    """A Cerby that answers every request with a redirect to another host (a port, here), and
    that host, which remembers the `X-API-Key` of each request that reaches it."""

    url: str
    seen: list[str | None]


@pytest.fixture
def redirecting_cerby() -> Iterator[RedirectingCerby]:
    seen: list[str | None] = []

    async def capture(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-API-Key"))
        return web.Response()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="redirecting-cerby", daemon=True)
    thread.start()

    def on_loop(work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, loop).result(30)

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", capture)
    other_runner, other_port = on_loop(start_server(other, "127.0.0.1", 0))

    async def redirect(request: web.Request) -> web.Response:
        location = f"http://127.0.0.1:{other_port}{request.path_qs}"
        return web.Response(status=307, headers={"Location": location})

    cerby = web.Application()
    cerby.router.add_route("*", "/{tail:.*}", redirect)
    runner, port = on_loop(start_server(cerby, "127.0.0.1", 0))
    yield RedirectingCerby(f"http://127.0.0.1:{port}/api/v1", seen)
    on_loop(runner.cleanup())
    on_loop(other_runner.cleanup())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_a_redirect_is_never_followed(redirecting_cerby: RedirectingCerby, tmp_path: Path) -> None:
    args = ["--api-url", redirecting_cerby.url, "--job-ids", FINISHED, "--log.level", "debug"]
    with ExporterProcess(args, tmp_path, {"CERBY_API_KEY": OLD_KEY}) as exporter:
        exporter.wait_ready()
        samples = scrape(exporter.url)
        page = httpx.get(exporter.url + "/", timeout=15).text
        assert exporter.terminate() == 0
    assert value(samples, "cerby_api_requests_total", code="307") is not None
    assert value(samples, "cerby_job_fetch_errors_total", reason="invalid_response") == 1
    assert redirecting_cerby.seen == []  # the other host never heard from us
    assert leaks(exporter.stderr() + exporter.stdout()) == []
    assert leaks(page) == []
