"""End to end: the simulator, the exporter, a real Prometheus loaded with the shipped rules and
scraping the exporter, and a real Alertmanager with the shipped example configuration.

A healthy workspace raises no alert; then jobs fail in the simulator, and the expected alerts
fire in Prometheus and reach Alertmanager with the right receiver. With that data in Prometheus,
every PromQL expression of the rules and dashboards is evaluated, every overview panel returns
data, and every metric name they use is checked against the exporter's real output.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import (
    ALERTMANAGER_CONFIG,
    DASHBOARD_FILES,
    PROMETHEUS_METRICS,
    RULES_FILE,
    WebhookReceiver,
    alertmanager,
    clean_env,
    free_port,
    http,
    http_json,
    load_dashboard,
    metric_names,
    panels,
    parse_samples,
    prometheus,
    recorded_names,
    rules,
    run_service,
    substitute_variables,
    threshold_override_names,
    variable_queries,
    wait_for,
)

API_KEY = "e2e-secret-key"
JOB = "cerby-exporter"


def job_id(n: int) -> str:
    return f"0e200000-0000-4000-8000-{n:012d}"


WRITTEN = time.time()
"""When the job timestamps below were written: a job's age grows from there."""


def iso_ago(seconds: float) -> str:
    return datetime.fromtimestamp(WRITTEN - seconds, UTC).isoformat()


def account(provider: str, name: str) -> dict[str, str]:
    slug = name.lower().replace(" ", "-")
    return {"entity": "account", "id": f"acc-{slug}", "name": name, "provider": provider}


# A healthy workspace: finished jobs (an access removal among them) and jobs in flight.
HEALTHY: dict[str, dict[str, Any]] = {
    job_id(1): {"status": "finished", "workflowType": "password_rotation", "trigger": "manual",
                "account": account("twitter", "Brand X"), "canRetry": False},
    job_id(2): {"status": "finished", "workflowType": "revoke_access",
                "trigger": "user_deprovisioned", "account": account("slack", "Eng Workspace"),
                "canRetry": False},
    job_id(3): {"status": "running", "workflowType": "provide_access", "trigger": "manual",
                "account": account("meta", "Ads")},
    job_id(4): {"status": "created", "workflowType": "setup_mfa",
                "trigger": "workspace_policy", "account": account("instagram", "Brand Y")},
}  # fmt: skip

REVOKE_FAILED, RETRYABLE, NEEDS_PERSON, NO_RETRY_INFO, STUCK, MISSING = (
    job_id(n) for n in (11, 12, 13, 14, 15, 16)
)
FAILURES: dict[str, dict[str, Any]] = {
    REVOKE_FAILED: {"status": "error", "workflowType": "revoke_access",
                    "trigger": "user_deprovisioned", "account": account("twitter", "Brand X"),
                    "canRetry": False,
                    "errorDetails": {"errorType": "login_failed", "userRequired": True}},
    RETRYABLE: {"status": "error", "workflowType": "password_rotation", "trigger": "manual",
                "account": account("linkedin", "Careers"), "canRetry": True,
                "errorDetails": {"errorType": "timeout", "userRequired": False}},
    NEEDS_PERSON: {"status": "error", "workflowType": "setup_mfa", "trigger": "manual",
                   "account": account("instagram", "Brand Y"), "canRetry": False},
    NO_RETRY_INFO: {"status": "error", "workflowType": "disable_mfa", "trigger": "system",
                    "account": account("tiktok", "Brand Z")},
    STUCK: {"status": "running", "workflowType": "provide_access", "trigger": "manual",
            "account": account("github", "Org"), "createdAt": iso_ago(7300),
            "updatedAt": iso_ago(7200)},
}  # fmt: skip
# MISSING is tracked but unknown to Cerby (404).

EXPECTED_FIRING = {
    ("CerbyAccessRemovalJobFailed", REVOKE_FAILED),
    ("CerbyJobFailedRetryable", RETRYABLE),
    ("CerbyJobFailedNeedsPerson", NEEDS_PERSON),
    ("CerbyJobFailed", NO_RETRY_INFO),
}
EXPECTED_PENDING = {("CerbyJobStuck", STUCK), ("CerbyJobDataStale", MISSING)}


@dataclass
class Stack:
    prometheus: str
    alertmanager: str
    exporter: str
    simulator: str
    healthy_snapshots: list[list[dict[str, Any]]] = field(default_factory=list)
    healthy_alertmanager: list[dict[str, Any]] = field(default_factory=list)


def prom_query(base: str, expr: str, **params: str) -> dict[str, Any]:
    endpoint = "query_range" if "start" in params else "query"
    query = urllib.parse.urlencode({"query": expr, **params})
    status, body = http(f"{base}/api/v1/{endpoint}?{query}")
    answer: dict[str, Any] = json.loads(body)
    assert status == 200, f"{expr!r}: HTTP {status}: {answer.get('error')}"
    assert answer["status"] == "success", f"{expr!r}: {answer}"
    assert not answer.get("warnings"), f"{expr!r}: {answer['warnings']}"
    data: dict[str, Any] = answer["data"]
    return data


def prom_alerts(base: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = http_json(f"{base}/api/v1/alerts")["data"]["alerts"]
    return alerts


def alert_keys(alerts: list[dict[str, Any]], state: str) -> set[tuple[str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"].get("job_id", "")) for a in alerts
        if a["state"] == state
    }  # fmt: skip


def write_job_ids(path: Path, ids: list[str]) -> None:
    """Replace the file in one step, as an editor or a ConfigMap update would."""
    staging = path.with_suffix(".tmp")
    staging.write_text("# tracked jobs\n" + "\n".join(ids) + "\n", encoding="utf-8")
    staging.replace(path)


def put_jobs(simulator: str, jobs: dict[str, dict[str, Any]]) -> None:
    for identifier, attributes in jobs.items():
        http_json(f"{simulator}/_sim/jobs/{identifier}", "PUT", attributes)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("e2e")
    sim_port, exporter_port = free_port(), free_port()
    simulator = f"http://127.0.0.1:{sim_port}"
    exporter = f"http://127.0.0.1:{exporter_port}"
    ids_file = work / "job-ids.txt"
    write_job_ids(ids_file, list(HEALTHY))
    receiver = WebhookReceiver.in_directory(work)
    sim_args = [sys.executable, "-m", "cerby_exporter.simulator", "--listen",
                f"127.0.0.1:{sim_port}", "--api-key", API_KEY, "--scenario", "empty"]  # fmt: skip
    exporter_args = [
        sys.executable, "-m", "cerby_exporter",
        "--api-url", f"{simulator}/api/v1",
        "--job-ids-file", str(ids_file),
        "--cache-ttl", "1",
        "--web.listen-address", f"127.0.0.1:{exporter_port}",
        "--log.level", "error",
        *receiver.flags(),
    ]  # fmt: skip
    with run_service("simulator", sim_args, work) as sim:
        sim.wait_ready(f"{simulator}/_sim/stats")
        put_jobs(simulator, HEALTHY)
        with run_service(
            "exporter", exporter_args, work, clean_env({"CERBY_API_KEY": API_KEY})
        ) as exp:
            exp.wait_ready(f"{exporter}/readyz")
            # A configured job that failed, was retried and worked: the webhook series have data.
            first = job_id(1)
            assert receiver.deliver(exporter, first, application="twitter") == "accepted"
            assert receiver.deliver(
                exporter, first, event_type="automation.succeeded", error_code=None
            ) == "accepted"  # fmt: skip
            with alertmanager(ALERTMANAGER_CONFIG, work) as am_url:
                config = work / "prometheus.yml"
                config.write_text(prometheus_config(exporter, am_url), encoding="utf-8")
                with prometheus(config, work) as prom_url:
                    built = Stack(prom_url, am_url, exporter, simulator)
                    observe_healthy(built)
                    put_jobs(simulator, FAILURES)
                    write_job_ids(ids_file, [*HEALTHY, *FAILURES, MISSING])
                    wait_for_failure_alerts(built)
                    yield built


def prometheus_config(exporter: str, alertmanager_url: str) -> str:
    """Scrape and evaluate every second, with the shipped rules, alerting the Alertmanager."""

    def targets(url: str) -> list[dict[str, list[str]]]:
        return [{"targets": [url.removeprefix("http://")]}]

    document = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "alerting": {"alertmanagers": [{"static_configs": targets(alertmanager_url)}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": targets(exporter)}],
    }
    return yaml.safe_dump(document)


def observe_healthy(stack: Stack) -> None:
    """Wait until the rules have run on scraped data, then watch the alerts for a while."""

    def settled() -> bool:
        in_flight = prom_query(stack.prometheus, "cerby:job_in_progress:age_seconds")["result"]
        target = prom_query(stack.prometheus, "cerby:exporter_target:up == 1")["result"]
        return len(in_flight) == 2 and len(target) == 1

    wait_for("the rules to run on the exporter's data", settled, timeout=30)
    time.sleep(3)  # several evaluations of every group
    for _ in range(3):
        stack.healthy_snapshots.append(prom_alerts(stack.prometheus))
        time.sleep(1)
    stack.healthy_alertmanager = http_json(f"{stack.alertmanager}/api/v2/alerts")


def wait_for_failure_alerts(stack: Stack) -> None:
    def arrived() -> bool:
        alerts = prom_alerts(stack.prometheus)
        return (
            alert_keys(alerts, "firing") == EXPECTED_FIRING
            and alert_keys(alerts, "pending") == EXPECTED_PENDING
        )

    wait_for("the failure alerts in Prometheus", arrived, timeout=30)


def test_healthy_workspace_raises_no_alert(stack: Stack) -> None:
    assert stack.healthy_snapshots == [[], [], []], "no alert fires or even pends"
    assert stack.healthy_alertmanager == []


def test_failed_jobs_raise_the_expected_alerts(stack: Stack) -> None:
    alerts = prom_alerts(stack.prometheus)
    assert alert_keys(alerts, "firing") == EXPECTED_FIRING
    assert alert_keys(alerts, "pending") == EXPECTED_PENDING
    (revoke,) = (a for a in alerts if a["labels"]["alertname"] == "CerbyAccessRemovalJobFailed")
    instance = stack.exporter.removeprefix("http://")
    assert revoke["labels"] == {
        "alertname": "CerbyAccessRemovalJobFailed",
        "severity": "critical",
        "job": JOB,
        "instance": instance,
        "job_id": REVOKE_FAILED,
        "workflow_type": "revoke_access",
        "provider": "twitter",
        "trigger": "user_deprovisioned",
        "account_id": "acc-brand-x",
        "account_name": "Brand X",
        "access_removal": "true",
        "can_retry": "false",
        "error_type": "login_failed",
        "user_required": "true",
    }
    assert revoke["annotations"]["description"] == (
        f'Cerby job {REVOKE_FAILED} (revoke_access on twitter, account "Brand X", trigger '
        "user_deprovisioned) ended in error (login_failed). It was removing access: the person "
        "may still have access to the account. Can retry: false; needs a person: true."
    )
    runbook = revoke["annotations"]["runbook_url"]
    assert runbook.endswith("/docs/alerts.md#cerbyaccessremovaljobfailed")
    by_name = {a["labels"]["alertname"]: a["labels"] for a in alerts}
    assert by_name["CerbyJobFailedRetryable"]["can_retry"] == "true"
    assert by_name["CerbyJobFailedNeedsPerson"]["can_retry"] == "false"
    assert by_name["CerbyJobFailed"]["can_retry"] == "unknown"
    assert by_name["CerbyJobStuck"]["status"] == "running"
    assert by_name["CerbyJobDataStale"]["job_id"] == MISSING
    stuck = next(a for a in alerts if a["labels"]["alertname"] == "CerbyJobStuck")
    # Its age counts from updatedAt (7200 s before WRITTEN), not from createdAt (7300 s).
    assert 7200 <= float(stuck["value"]) <= 7200 + (time.time() - WRITTEN)
    # Every annotation template expanded (they run queries of their own, e.g. the stale one).
    assert "error expanding template" not in json.dumps(alerts)
    stale = next(a for a in alerts if a["labels"]["alertname"] == "CerbyJobDataStale")
    assert stale["annotations"]["description"] == (
        f"The exporter {instance} cannot fetch Cerby job {MISSING} and has had no good data for "
        "it for 15m 0s or more (none is shown: never fetched, or withdrawn as too old). Its "
        "alerts cannot be trusted until it is fetched again."
    )
    # No alert about a healthy job, in any state.
    assert not {a["labels"].get("job_id") for a in alerts} & set(HEALTHY)


def test_alerts_reach_alertmanager_with_the_right_receiver(stack: Stack) -> None:
    expected = {
        REVOKE_FAILED: ["security"],
        RETRYABLE: ["operations"],
        NEEDS_PERSON: ["operations"],
        NO_RETRY_INFO: ["operations"],
    }

    def delivered() -> dict[str, list[str]] | None:
        found = http_json(f"{stack.alertmanager}/api/v2/alerts")
        receivers = {
            a["labels"]["job_id"]: sorted(r["name"] for r in a["receivers"]) for a in found
        }
        return receivers if set(receivers) == set(expected) else None

    assert wait_for("the alerts in Alertmanager", delivered, timeout=30) == expected
    found = http_json(f"{stack.alertmanager}/api/v2/alerts")
    assert {a["status"]["state"] for a in found} == {"active"}
    assert {a["labels"]["alertname"] for a in found} == {name for name, _ in EXPECTED_FIRING}


def test_every_rule_is_healthy_in_prometheus(stack: Stack) -> None:
    groups = http_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    shipped = {rule.get("record") or rule["alert"] for rule in rules()}
    assert set(loaded) == shipped
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert not rule.get("lastError"), name


def test_every_rule_expression_evaluates(stack: Stack) -> None:
    for rule in rules():
        data = prom_query(stack.prometheus, rule["expr"])
        assert data["resultType"] == "vector", rule["expr"]
    # The recording rules the dashboards need have data.
    for name in ("cerby:job_failed:info", "cerby:job_in_progress:age_seconds",
                 "cerby:job_success:ratio", "cerby:job_access_removal:info"):  # fmt: skip
        assert prom_query(stack.prometheus, name)["result"], name


def dashboard_results(stack: Stack, path: Path) -> list[tuple[str, str, list[Any]]]:
    """(panel, query, result) of every query of a dashboard, variables substituted."""
    now = time.time()
    found = []
    for item in panels(load_dashboard(path)):
        for target in item.get("targets", []):
            expr = substitute_variables(target["expr"])
            if target.get("instant"):
                data = prom_query(stack.prometheus, expr, time=f"{now:.3f}")
            else:
                data = prom_query(
                    stack.prometheus, expr, start=f"{now - 30:.3f}", end=f"{now:.3f}", step="5"
                )
            found.append((item["title"], expr, data["result"]))
    return found


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.stem)
def test_every_dashboard_query_evaluates_and_returns_data(stack: Stack, path: Path) -> None:
    results = dashboard_results(stack, path)
    assert len(results) >= 10
    for title, expr, result in results:
        assert result, f"panel {title!r} shows no data: {expr}"


def test_overview_panels_show_the_failures(stack: Stack) -> None:
    overview = next(path for path in DASHBOARD_FILES if path.stem == "cerby-jobs-overview")
    results = {title: result for title, _, result in dashboard_results(stack, overview)}
    first = {title: float(result[0]["value"][1]) for title, result in results.items()
             if result and "value" in result[0]}  # fmt: skip
    assert first["Failed access removals"] == 1
    assert first["Jobs in flight"] == 3
    assert first["Cerby API"] == 1
    table = {row["metric"]["job_id"]: float(row["value"][1]) for row in results["Failed jobs"]}
    assert set(table) == {REVOKE_FAILED, RETRYABLE, NEEDS_PERSON, NO_RETRY_INFO}
    # "Last update" is the job's updatedAt, in milliseconds for Grafana's date unit.
    assert all(abs(value / 1000 - time.time()) < 120 for value in table.values())
    (stuck,) = results["Stuck jobs"]
    assert stuck["metric"]["job_id"] == STUCK


def test_dashboard_variables_have_values(stack: Stack) -> None:
    for uid, name, query in variable_queries():
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, (uid, name, query)
        selector, label = substitute_variables(match.group(1)), match.group(2)
        params = urllib.parse.urlencode({"match[]": selector})
        values = http_json(f"{stack.prometheus}/api/v1/label/{label}/values?{params}")["data"]
        assert values, (uid, name)
        if name == "provider":
            assert {"twitter", "linkedin", "instagram", "tiktok", "github"} <= set(values)


def test_every_metric_name_exists_in_the_exporters_output(stack: Stack) -> None:
    status, body = http(f"{stack.exporter}/metrics")
    assert status == 200
    exposed = {name for name, _ in parse_samples(body.decode())}
    overrides = threshold_override_names()
    recorded = recorded_names()
    exprs = [rule["expr"] for rule in rules()]
    for path in DASHBOARD_FILES:
        for item in panels(load_dashboard(path)):
            exprs += [target["expr"] for target in item.get("targets", [])]
    for _, _, query in variable_queries():
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        assert match, query
        exprs.append(match.group(1))
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert len(used) > 20
    for name in sorted(used):
        if ":" in name:
            assert name in recorded | overrides, name
        elif name not in PROMETHEUS_METRICS:
            assert name in exposed, f"{name} is not in the exporter's output"
