"""What the tests and the benchmarks share.

A small simulated workspace and a clock that moves only when a test moves it; an exporter
serving in this process, or as a real process (for signals, exit codes, every byte it printed,
memory readings); the simulator, Prometheus and Alertmanager as real processes; signed webhook
deliveries; readings of a process from /proc; an exposition read back as numbers; and the
shipped rules, dashboards and alert docs taken apart. Everything listens on loopback, every
process is stopped when its test ends, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from cerby_exporter import logs
from cerby_exporter.app import EXPORTER, create_app, start_server
from cerby_exporter.settings import Settings
from cerby_exporter.signatures import KeysSource, sign
from cerby_exporter.simulator import SimJob, Simulator
from cerby_exporter.state import StateStore
from cerby_exporter.webconfig import WebConfigSource

T = TypeVar("T")

# --- paths ------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = REPO / "dashboards"
RULES_FILE = DASHBOARDS_DIR / "alerts" / "cerby-exporter.rules.yml"
RULE_TESTS_DIR = DASHBOARDS_DIR / "alerts" / "tests"
OVERRIDES_EXAMPLE = DASHBOARDS_DIR / "alerts" / "examples" / "threshold-overrides.yml"
ALERTMANAGER_CONFIG = DASHBOARDS_DIR / "alertmanager" / "alertmanager.yml"
DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
GENERATOR = DASHBOARDS_DIR / "generate_dashboards.py"
ALERTS_DOC = REPO / "docs" / "alerts.md"
RUNBOOK_BASE = "https://github.com/cerby-exporter/cerby-exporter/blob/main/docs/alerts.md#"


# --- a simulated workspace --------------------------------------------------------------------

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


def settings_for(sim: Simulator, **values: Any) -> dict[str, Any]:
    return {
        "api_url": sim.base_url,
        "api_key": API_KEY,
        "job_ids": (FINISHED, RUNNING, FAILED, MISSING),
        **values,
    }


# --- a clock ----------------------------------------------------------------------------------


@dataclass
class Clock:
    """Time that moves only when a test moves it (`clock.now += 61`), for code that takes its
    clock as a callable in place of `time.time` or `time.monotonic`."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


# --- an exporter in this process --------------------------------------------------------------


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


# --- webhooks ---------------------------------------------------------------------------------


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
        # Replaced in one step, as Kubernetes swaps a mounted Secret: a reload never reads
        # half a file (a half-written one is refused and the keys in force kept, see test_webhook).
        staging = self.path.with_name(self.path.name + ".new")
        staging.write_text("keys:\n" + "".join(entries) if entries else "keys: []\n")
        staging.replace(self.path)
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


@dataclass(frozen=True)
class WebhookReceiver:
    """What an exporter process needs for its webhook receiver: signing keys made for the test,
    a state file, and a way to send it deliveries signed as Cerby signs."""

    keys: WebhookKeys
    state: Path
    path: str = "/webhooks/cerby"

    @classmethod
    def in_directory(cls, work: Path) -> WebhookReceiver:
        return cls(WebhookKeys(work / "webhook-keys.yaml").write(), work / "state.sqlite")

    def flags(self) -> list[str]:
        return ["--webhook.keys-file", str(self.keys.path), "--state.path", str(self.state)]

    def deliver(self, exporter: str, job_id: str | None, **event: Any) -> str:
        """POST one signed event envelope to the exporter; returns the receiver's result."""
        body = envelope(job_id, **event)
        status, answer = http(
            exporter + self.path, "POST", raw=body, headers=self.keys.headers(body)
        )
        result: str = json.loads(answer)["result"]
        assert status == 200, f"webhook delivery answered {status}: {result}"
        return result


# --- ports, HTTP, raw connections and waiting -------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(
    url: str,
    method: str = "GET",
    body: Any = None,
    timeout: float = 5.0,
    *,
    raw: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    """`body` is sent as JSON; `raw` as the bytes it is, with `headers` (a signed delivery)."""
    data = raw
    if data is None and body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and not request.has_header("Content-type"):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_json(url: str, method: str = "GET", body: Any = None) -> Any:
    status, content = http(url, method, body)
    assert 200 <= status < 300, f"{method} {url}: HTTP {status}: {content[:500]!r}"
    return json.loads(content) if content else None


def ready(url: str) -> bool:
    try:
        return http(url, timeout=1.0)[0] == 200
    except OSError:
        return False


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something other than None (or False), or fail. A probe
    that raises an assertion, a connection error or a bad value is asked again."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result is not None and result is not False:
                return result
        except (OSError, AssertionError, ValueError) as error:
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {last_error}")
        time.sleep(interval)


@dataclass(frozen=True)
class Exchange:
    """What came back on one raw connection, and whether the exporter ended it."""

    received: bytes
    closed: bool
    """The exporter closed the connection (end of stream or reset) before the read timed out;
    False means it was still open, waiting for more."""

    @property
    def statuses(self) -> list[int]:
        """Status codes of the responses received, in order."""
        return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", self.received)]


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> Exchange:
    """Everything the peer sends until it closes the connection or `timeout` seconds pass: a
    request that hangs shows as `closed=False`, never as a test that hangs."""
    deadline = time.monotonic() + timeout
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return Exchange(received, closed=True)
        if not chunk:
            return Exchange(received, closed=True)
        received += chunk
    return Exchange(received, closed=False)


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> Exchange:
    """Send `request` as given on a new loopback connection and read what comes back. The
    exporter may answer and close before all of a refused request is sent: what it answered
    is read all the same."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return read_until_closed(sock, timeout)


# --- processes --------------------------------------------------------------------------------


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any CERBY_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERBY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def stop(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


@dataclass
class Service:
    """A process `run_service` started, and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """A RuntimeError, not an assertion: `wait_for` asks again after an assertion, and a
        process that exited will not come back."""
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def wait_ready(self, url: str, timeout: float = 20.0) -> None:
        """Poll `url` until it answers 200; fail at once if the process dies."""

        def answered() -> bool:
            self.check_alive()
            return ready(url)

        wait_for(f"{self.name} at {url}", answered, timeout)


@contextmanager
def run_service(
    name: str, args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[Service]:
    """Start a process with its output in `log_dir/name.log`; stop it (and only it) at the end."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(args), stdout=sink, stderr=subprocess.STDOUT, env=dict(env or clean_env())
        )
    service = Service(name, process, log)
    try:
        yield service
    finally:
        stop(process)


class ExporterProcess:
    """`python -m cerby_exporter ARGS` on a free loopback port, output kept in files."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        scheme: str = "http",
    ) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.stdout_path = workdir / f"exporter-{self.port}.out"
        self.stderr_path = workdir / f"exporter-{self.port}.err"
        self.command = [
            sys.executable,
            "-m",
            "cerby_exporter",
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            *args,
        ]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=err, env=clean_env(env), cwd=workdir
            )

    def wait_listening(self, timeout: float = 20.0, interval: float = 0.05) -> None:
        """Until the port takes connections (TLS or not), or fail with the process's output.
        The benchmarks poll with a short `interval` to time the start-up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(interval)
        raise AssertionError(f"exporter did not listen within {timeout}s: {self.stderr()}")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until /readyz answers 200 (plain HTTP only)."""
        self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"exporter not ready within {timeout}s: {self.stderr()}")

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SimulatorProcess:
    """`python -m cerby_exporter.simulator ARGS`, started and read until it listens."""

    def __init__(self, args: Sequence[str]) -> None:
        command = [
            sys.executable,
            "-m",
            "cerby_exporter.simulator",
            "--listen",
            "127.0.0.1:0",
            *args,
        ]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise AssertionError(f"simulator did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        self.root = self.base_url.removesuffix("/api/v1")

    def stats(self) -> dict[str, object]:
        answer = httpx.get(self.root + "/_sim/stats", timeout=10).json()
        assert isinstance(answer, dict)
        return answer

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


def tool(name: str) -> str:
    """The path of a Prometheus tool; Debian's packages put them in /usr/bin."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")
    assert found, f"{name} is not installed: run `make tools`"
    return found


@contextmanager
def alertmanager(config: Path, work_dir: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, without clustering; yields its base URL."""
    storage = work_dir / "alertmanager-data"
    storage.mkdir()
    args = [f"--config.file={config}", f"--storage.path={storage}", "--cluster.listen-address="]
    with _prometheus_server("alertmanager", "prometheus-alertmanager", args, work_dir, 20) as url:
        yield url


@contextmanager
def prometheus(config: Path, work_dir: Path) -> Iterator[str]:
    """A real Prometheus on a free loopback port, data in `work_dir`; yields its base URL."""
    storage = work_dir / "prometheus-data"
    storage.mkdir()
    args = [f"--config.file={config}", f"--storage.tsdb.path={storage}"]
    with _prometheus_server("prometheus", "prometheus", args, work_dir, 30) as url:
        yield url


@contextmanager
def _prometheus_server(
    name: str, binary: str, args: Sequence[str], work_dir: Path, timeout: float
) -> Iterator[str]:
    """A Prometheus project's server (they share the listen and log flags and `/-/ready`) on a
    free loopback port, once ready; yields its base URL."""
    port = free_port()
    argv = [tool(binary), *args, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    url = f"http://127.0.0.1:{port}"
    with run_service(name, argv, work_dir) as service:
        service.wait_ready(f"{url}/-/ready", timeout)
        yield url


# --- a process, read from /proc ---------------------------------------------------------------


def _status_field(pid: int, name: str) -> int:
    """The number a line `name:` of /proc/PID/status starts with."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} for {pid}")


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB (/proc counts it in KiB)."""
    return _status_field(pid, "VmRSS") / 1024


def threads(pid: int) -> int:
    """Threads of a process: what a connection must not cost."""
    return _status_field(pid, "Threads")


def connections_held(port: int) -> int:
    """TCP connections to loopback `port` that its server has accepted and not yet closed,
    from /proc/net/tcp: those still in the listen backlog, or closed by the server, have no
    socket file (inode 0); the listening socket itself is left out."""
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] != "0A" and fields[9] != "0":
            held += 1
    return held


# --- expositions, read back -------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the exposition does not have it."""
    return samples.get((name, tuple(sorted(labels.items()))))


def job_ids_with(samples: Samples, name: str) -> set[str]:
    """The `job_id` label values that `name` has samples for."""
    return {dict(labels)["job_id"] for (n, labels) in samples if n == name}


def openmetrics_families(text: str) -> Iterator[Metric]:
    """The families of an OpenMetrics exposition, by prometheus_client's own parser (cast:
    the library leaves that parser untyped)."""
    parse = cast(
        Callable[[str], Iterator[Metric]], openmetrics_parser.text_string_to_metric_families
    )
    return parse(text)


# --- the shipped rules and dashboards ---------------------------------------------------------

# Names Prometheus itself makes, not the exporter.
PROMETHEUS_METRICS = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})

# Values the Grafana variables get when the e2e test evaluates dashboard queries.
GRAFANA_VARIABLES = {
    "datasource": "prometheus",
    "job": ".*",
    "instance": ".*",
    "provider": ".*",
    "workflow_type": ".*",
    "__rate_interval": "1m",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(RULES_FILE)["groups"]
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def threshold_override_names() -> set[str]:
    """The series an operator may record to override a threshold: one per threshold."""
    prefix = "cerby:threshold:"
    return {
        name.replace(prefix, "cerby:threshold_override:", 1)
        for name in recorded_names()
        if name.startswith(prefix)
    }


def load_dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for item in dashboard.get("panels", []):
        yield item
        yield from item.get("panels", [])


@dataclass(frozen=True)
class DashboardQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str


def dashboard_queries() -> list[DashboardQuery]:
    queries = []
    for path in DASHBOARD_FILES:
        board = load_dashboard(path)
        for item in panels(board):
            for query in item.get("targets", []):
                queries.append(
                    DashboardQuery(board["uid"], item["title"], query["refId"], query["expr"])
                )
    return queries


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, variable name, query) of every query variable."""
    found = []
    for path in DASHBOARD_FILES:
        board = load_dashboard(path)
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                found.append((board["uid"], variable["name"], str(variable["query"])))
    return found


# --- PromQL, taken apart just enough ----------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'" + r"|`[^`]*`")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "atan2", "NaN", "Inf", "nan", "inf"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (label names, functions, keywords left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _LABEL_LIST.sub(" ", text)
    text = re.sub(r"\$\w+|\$\{\w+\}", " ", text)  # Grafana variables outside strings
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def range_selectors(expr: str) -> list[str]:
    return re.findall(r"\[([^\]]*)\]", _STRING.sub('""', expr))


def substitute_variables(expr: str, values: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    """Replace Grafana's `$name` and `${name}` the way Grafana would."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def variables_used(text: str) -> set[str]:
    return {a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", text)}


# --- the alert docs ---------------------------------------------------------------------------


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def doc_anchors(path: Path = ALERTS_DOC) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


# ---- Certificates: a CA and the leaves it signs, for TLS over real sockets


@dataclass(frozen=True)
class Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def issue(
    directory: Path,
    name: str,
    issuer: Issuer | None,
    usage: x509.ObjectIdentifier | None = None,
    passphrase: bytes | None = None,
) -> Issuer:
    """Write `name.crt` and `name.key`: a CA when `issuer` is None, else a leaf it signs for
    `usage` (server certificates name 127.0.0.1 and localhost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = issuer or Issuer(subject, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
            critical=False,
        )
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    certificate = builder.sign(signer.key, hashes.SHA256())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase is not None
        else serialization.NoEncryption()
    )
    (directory / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return Issuer(subject, key)
