"""The README's first command, as a newcomer runs it: `make run` in a fresh copy of the project."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, clean_env, free_port

TEST_TOOLS = ("pytest", "ruff", "mypy", "hadolint")


def fresh_copy(target: Path) -> Path:
    """The files git knows (committed or not), without any venv, cache or build output."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = REPO / os.fsdecode(name)
        if source.is_file():
            destination = target / os.fsdecode(name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read_bytes())
    return target


@pytest.mark.slow
def test_make_run_installs_only_the_runtime_and_serves_the_demo(tmp_path: Path) -> None:
    copy = fresh_copy(tmp_path / "clone")
    port = free_port()
    log = tmp_path / "make-run.log"
    env = {
        name: value
        for name, value in clean_env({"CERBY_LISTEN_ADDRESS": f"127.0.0.1:{port}"}).items()
        if name not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")  # a newcomer's shell, not make's
    }
    with log.open("wb") as sink:
        make = subprocess.Popen(
            ["make", "run"], cwd=copy, env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            body = ""
            deadline = time.monotonic() + 300
            while "cerby_job_status{" not in body:
                assert make.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                try:
                    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except httpx.TransportError:
                    time.sleep(0.5)
        finally:
            os.killpg(make.pid, signal.SIGTERM)
            make.wait(30)
    assert "cerby_up 1.0" in body
    said = log.read_text()
    assert "make: creating .venv and installing cerby-exporter" in said.splitlines()[0]
    installed = {path.name for path in (copy / ".venv" / "bin").iterdir()}
    assert "cerby-exporter" in installed
    assert not installed & set(TEST_TOOLS)
