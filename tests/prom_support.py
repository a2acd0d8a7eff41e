"""Helpers for the tests of the alert rules, dashboards and Alertmanager example.

Paths of the shipped files, PromQL taken apart just enough to list metric names, and real
processes (Prometheus, Alertmanager, the exporter, the simulator) started on loopback ports and
always stopped; an exporter's webhook receiver turned on, and fed signed deliveries, so that its
series exist in real output.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.support import WebhookKeys, envelope

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

T = TypeVar("T")


def tool(name: str) -> str:
    """The path of a Prometheus tool; Debian's packages put them in /usr/bin."""
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/local/bin")
    assert found, f"{name} is not installed: run `make tools`"
    return found


# --- the shipped files ------------------------------------------------------------------------


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


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def doc_anchors(path: Path = ALERTS_DOC) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {github_anchor(heading) for heading in headings}


# --- HTTP and processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something other than None (or False), or fail."""
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


def ready(url: str) -> bool:
    try:
        return http(url, timeout=1.0)[0] == 200
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CERBY_* setting of the calling shell, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CERBY_")}
    env.update(extra)
    return env


@dataclass
class Service:
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
        code = self.process.poll()
        assert code is None, f"{self.name} exited with {code}:\n{self.log_tail()}"

    def wait_ready(self, url: str, timeout: float = 20.0) -> None:
        """Poll `url` until it answers 200; fail at once if the process dies."""

        def answered() -> bool:
            self.check_alive()
            return ready(url)

        wait_for(f"{self.name} at {url}", answered, timeout)


@contextmanager
def running(
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


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


@contextmanager
def alertmanager(config: Path, work_dir: Path) -> Iterator[str]:
    """A real Alertmanager on a free loopback port, without clustering; yields its base URL."""
    port = free_port()
    storage = work_dir / "alertmanager-data"
    storage.mkdir()
    args = [
        tool("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with running("alertmanager", args, work_dir) as service:
        service.wait_ready(f"{url}/-/ready", timeout=20)
        yield url


@contextmanager
def prometheus(config: Path, work_dir: Path) -> Iterator[str]:
    """A real Prometheus on a free loopback port, data in `work_dir`; yields its base URL."""
    port = free_port()
    storage = work_dir / "prometheus-data"
    storage.mkdir()
    args = [
        tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    url = f"http://127.0.0.1:{port}"
    with running("prometheus", args, work_dir) as service:
        service.wait_ready(f"{url}/-/ready", timeout=30)
        yield url


# --- the webhook receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookReceiver:
    """What an exporter process needs for its webhook receiver: signing keys made for the test
    (tests/support.py's), a state file, and a way to send it deliveries signed as Cerby signs."""

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
