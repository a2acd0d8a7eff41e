"""The command as a person runs it: exit codes, one-line errors, the demo, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cerby_exporter import __version__
from cerby_exporter.simulator import DEMO_MISSING_JOB, demo_job_ids
from tests.support import ExporterProcess, free_port

SECRET = "sk-cli-test-never-print-4242"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERBY_")}
    return subprocess.run(
        [sys.executable, "-m", "cerby_exporter", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cerby-exporter {__version__}"


def test_check_config_prints_settings_with_the_key_redacted() -> None:
    result = run(
        "--check-config",
        "--cache-ttl",
        "30",
        env={
            "CERBY_API_URL": "https://acme.cerby.com/api/v1",
            "CERBY_API_KEY": SECRET,
            "CERBY_CACHE_TTL": "90",
            "CERBY_JOB_IDS": "aaaaaaaa-0000-0000-0000-000000000001",
        },
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "api_url = https://acme.cerby.com/api/v1" in lines
    assert "api_key = <redacted>" in lines
    assert "cache_ttl = 30.0" in lines  # the flag wins over the variable
    assert "job_ids_total = 1" in lines
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--api-url", "ftp://x"], {"CERBY_API_KEY": SECRET}, "invalid --api-url / CERBY_API_URL"),
        ([], {"CERBY_API_URL": "https://a.cerby.com/api/v1"}, "invalid --api-key-file"),
        (["--job-ids", "x"], {}, "invalid --job-ids / CERBY_JOB_IDS"),
        (["--cache-ttl", "-1"], {}, "invalid --cache-ttl / CERBY_CACHE_TTL"),
        (
            ["--max-jobs", "1", "--job-ids", f"{demo_job_ids()[0]} {demo_job_ids()[1]}"],
            {},
            "more than the cap",
        ),
        (["--job-ids-file", "/nonexistent"], {}, "invalid --job-ids-file"),
        ([], {"CERBY_TERMINAL_CACHE_TTL": "0"}, "invalid --terminal-cache-ttl"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
        (["--cache-ttl"], {}, "expected one argument"),
    ],
)
def test_a_bad_input_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], says: str
) -> None:
    base = {"CERBY_API_URL": "https://acme.cerby.com/api/v1", "CERBY_API_KEY": SECRET}
    merged = {**base, **env} if "CERBY_API_KEY" in env or not env else {**env}
    if "CERBY_API_URL" in env and "CERBY_API_KEY" not in env:
        merged = env
    result = run(*args, env=merged)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("--demo", "--web.listen-address", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_serves_jobs_within_seconds_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "cerby_exporter", "--demo", "--web.listen-address",
             f"127.0.0.1:{port}", "--log.format", "json"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            body = ""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                    if "cerby_job_status{" in body:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            assert "cerby_up 1" in body
            for job_id in demo_job_ids():
                assert f'cerby_job_fetch_success{{job_id="{job_id}"}}' in body
            assert f'cerby_job_fetch_success{{job_id="{DEMO_MISSING_JOB}"}} 0' in body
            assert 'status="unknown"} 1' in body
            assert 'cerby_tracked_jobs{source="configured"} 21.0' in body
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=10)
    assert code == 0
    lines = log.read_text().splitlines()
    assert lines
    assert all(line.startswith("{") for line in lines)  # JSON, one event a line
    assert '"msg": "stopped"' in lines[-1]


def test_every_settings_problem_is_reported_at_once() -> None:
    result = run("--job-ids", "not-a-uuid", "--cache-ttl", "-1")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1  # pydantic refuses the TTL before the cross-field checks run
    assert "--cache-ttl / CERBY_CACHE_TTL" in lines[0]
    result = run("--job-ids", "not-a-uuid")
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert [line.split(":")[1].strip() for line in lines] == [
        "invalid --api-url / CERBY_API_URL",
        "invalid --job-ids / CERBY_JOB_IDS",
    ]
    assert "Traceback" not in result.stderr


def test_check_config_shows_the_url_a_workspace_yields_and_warns_about_nothing_to_watch() -> None:
    result = run("--check-config", "--workspace", "acme", env={"CERBY_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    assert "api_url = https://acme.cerby.com/api/v1" in result.stdout.splitlines()
    assert SECRET not in result.stdout + result.stderr
    assert "warning: no job IDs and no webhooks configured" in result.stderr
    watched = run(
        "--check-config",
        "--workspace",
        "acme",
        "--job-ids",
        "aaaaaaaa-0000-0000-0000-000000000001",
        env={"CERBY_API_KEY": SECRET},
    )
    assert watched.returncode == 0
    assert "warning" not in watched.stderr


def test_help_names_the_key_variable_and_the_choices() -> None:
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "CERBY_API_KEY" in text.replace("CERBY_API_KEY_FILE", "")
    assert "--log.level {debug,info,warning,error}" in text
    assert "--log.format {logfmt,json}" in text
    assert "--status-series {dense,sparse}" in text
    for name in ("CERBY_WEBHOOK_KEYS_FILE", "CERBY_STATE_PATH", "CERBY_JOB_RETENTION"):
        assert name in text


@pytest.mark.slow
def test_a_minute_of_demo_scrapes_every_2_s_repeats_no_warning_more_than_three_times(
    tmp_path: Path,
) -> None:
    with ExporterProcess(["--demo"], tmp_path) as demo:
        demo.wait_ready()
        deadline = time.monotonic() + 60
        bodies = []
        while time.monotonic() < deadline:
            bodies.append(httpx.get(demo.url + "/metrics", timeout=10).text)
            time.sleep(2)
        assert demo.terminate() == 0
        log = demo.stderr()
    assert len(bodies) >= 25
    assert all("cerby_up 1.0" in body for body in bodies)
    assert 'cerby_tracked_jobs{source="webhook"}' in bodies[-1]
    warnings = [line.split("msg=", 1)[1] for line in log.splitlines() if "level=warning" in line]
    assert warnings  # the demo has a 404 job and an undocumented status: each said once
    repeated = {line: warnings.count(line) for line in warnings if warnings.count(line) > 3}
    assert repeated == {}


def loads_cryptography(pid: int) -> bool:
    return "/cryptography/" in Path(f"/proc/{pid}/maps").read_text()


def test_cryptography_is_loaded_only_by_an_exporter_that_receives_webhooks(
    tmp_path: Path,
) -> None:
    """Its library is about a tenth of the exporter's memory (docs/performance.md)."""
    plain = ["--api-url", "http://127.0.0.1:9/api/v1", "--state.path", str(tmp_path / "s.db")]
    with ExporterProcess(plain, tmp_path, {"CERBY_API_KEY": "k" * 16}) as exporter:
        exporter.wait_ready()
        assert not loads_cryptography(exporter.proc.pid)
    with ExporterProcess(["--demo"], tmp_path) as demo:  # the demo receives signed webhooks
        demo.wait_ready()
        assert loads_cryptography(demo.proc.pid)
