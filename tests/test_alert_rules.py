"""The shipped Prometheus rules: valid for promtool, unit-tested alert by alert, and held to the
conventions the issue sets (names, severities, annotations, runbooks, one place for selectors
and thresholds, selections that work with dense and sparse status series)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ALERTS_DOC,
    OVERRIDES_EXAMPLE,
    RULE_TESTS_DIR,
    RULES_FILE,
    RUNBOOK_BASE,
    alerts,
    doc_anchors,
    load_yaml,
    metric_names,
    recorded_names,
    rule_groups,
    rules,
    tool,
)

# The alerts the issue asks for, by what they watch. Per-job alerts carry a job_id label.
JOB_ALERTS = {
    "CerbyAccessRemovalJobFailed",
    "CerbyJobFailedNeedsPerson",
    "CerbyJobFailedRetryable",
    "CerbyJobFailed",
    "CerbyAccessRemovalJobStuck",
    "CerbyJobStuck",
    "CerbyJobDataStale",
}
EXPORTER_ALERTS = {
    "CerbyApiKeyRejected",
    "CerbyApiDown",
    "CerbyApiRateLimited",
    "CerbyApiErrorsHigh",
    "CerbyExporterDown",
    "CerbyExporterAbsent",
}
# Alerts on the webhook receiver (no job_id either); silent where it is not enabled.
WEBHOOK_ALERTS = {
    "CerbyWebhookBadSignature",
    "CerbyWebhookUnknownKey",
    "CerbyJobsDropped",
    "CerbyWebhooksSilent",
}
EVERY_ALERT = JOB_ALERTS | EXPORTER_ALERTS | WEBHOOK_ALERTS
CRITICAL = {"CerbyAccessRemovalJobFailed", "CerbyAccessRemovalJobStuck", "CerbyApiKeyRejected"}
THRESHOLDS = {
    "job_stuck_seconds": 3600,
    "job_data_stale_seconds": 900,
    "api_error_ratio": 0.1,
    "webhook_silence_seconds": 21600,
}
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.test.yml"))


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=120, check=False
    )


def duration_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


def test_promtool_check_rules_passes_with_lint() -> None:
    result = run(
        tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", RULES_FILE,
        OVERRIDES_EXAMPLE,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 26 rules found" in result.stdout
    assert "SUCCESS: 2 rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert len(RULE_TEST_FILES) >= 5
    result = run(tool("promtool"), "test", "rules", *RULE_TEST_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TEST_FILES)


def test_the_alerts_the_issue_asks_for_exist_and_no_others() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    assert set(names) == EVERY_ALERT


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_alert_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Cerby(?:[A-Z][a-z]+)+", name)
    assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
    assert set(rule["labels"]) == {"severity"}
    severity = rule["labels"]["severity"]
    assert severity == ("critical" if name in CRITICAL else "warning")
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert "{{" not in annotations["summary"], "summary is static; details go in description"
    assert "{{" in annotations["description"]
    assert annotations["runbook_url"] == RUNBOOK_BASE + name.lower()
    # The for: duration is stated, and a failed job is reported at once (it does not flap).
    seconds = duration_seconds(rule["for"])
    if "Failed" in name:
        assert seconds == 0
    else:
        assert 5 * 60 <= seconds <= 15 * 60


@pytest.mark.parametrize("name", sorted(JOB_ALERTS))
def test_job_alert_descriptions_name_job_workflow_type_and_provider(name: str) -> None:
    (rule,) = (rule for rule in alerts() if rule["alert"] == name)
    description = rule["annotations"]["description"]
    assert "$labels.job_id" in description
    if name == "CerbyJobDataStale":  # data may be withdrawn: looked up, not a label
        assert "cerby_job_info{job_id=%q" in description
        assert ".Labels.workflow_type" in description
        assert ".Labels.provider" in description
    else:
        assert "$labels.workflow_type" in description
        assert "$labels.provider" in description


def test_every_runbook_anchor_exists_in_docs() -> None:
    anchors = doc_anchors()
    for rule in alerts():
        anchor = rule["annotations"]["runbook_url"].rpartition("#")[2]
        assert anchor in anchors, f"docs/alerts.md has no section for {rule['alert']}"
    text = ALERTS_DOC.read_text(encoding="utf-8")
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert len(links) > len(alerts())
    assert set(links) <= anchors, set(links) - anchors
    for section in ("Meaning", "What to do"):
        assert text.count(f"**{section}.**") == len(alerts())


def test_every_alert_is_unit_tested_both_firing_and_not_firing() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    with_annotations: set[str] = set()
    for path in RULE_TEST_FILES:
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                expected = check.get("exp_alerts") or []
                (fires if expected else silent).add(check["alertname"])
                if any("exp_annotations" in alert for alert in expected):
                    with_annotations.add(check["alertname"])
    every = EVERY_ALERT
    assert every <= fires, f"never shown firing: {every - fires}"
    assert every <= silent, f"never shown quiet: {every - silent}"
    assert every <= with_annotations, f"annotations never checked: {every - with_annotations}"


def test_healthy_workspace_test_checks_every_alert() -> None:
    (case,) = load_yaml(RULE_TESTS_DIR / "healthy.test.yml")["tests"]
    checked = {c["alertname"] for c in case["alert_rule_test"] if not c.get("exp_alerts")}
    assert checked == EVERY_ALERT
    assert {"expr": "ALERTS", "eval_time": "3h", "exp_samples": []} in case["promql_expr_test"]


def test_status_is_always_selected_with_equals_one() -> None:
    """Dense status series carry 0 for every status but the current one."""
    for rule in rules():
        for match in re.finditer(r"cerby_job_status\{[^}]*\}", rule["expr"]):
            after = rule["expr"][match.end() :]
            assert re.match(r"\s*==\s*1\b", after), f"{match.group()} without == 1"


def test_joins_keep_the_target_labels() -> None:
    """A join either matches nothing (a threshold) or the target's job and instance."""
    for rule in rules():
        for labels in re.findall(r"\bon\s*\(([^)]*)\)", rule["expr"]):
            names = {name.strip() for name in labels.split(",") if name.strip()}
            assert not names or {"job", "instance"} <= names, (rule, names)


def test_selectors_are_written_once() -> None:
    text = RULES_FILE.read_text(encoding="utf-8")
    exprs = {rule.get("record") or rule["alert"]: rule["expr"] for rule in rules()}
    for needle, owner in (
        ("revoke_access|revoke_native_partner_access", "cerby:job_access_removal:info"),
        ('trigger="user_deprovisioned"', "cerby:job_access_removal:info"),
        ("up{", "cerby:exporter_target:up"),
    ):
        users = [name for name, expr in exprs.items() if needle in expr]
        assert users == [owner], (needle, users)
    assert text.count('access_removal", "true"') == 2  # the label, derived from the selector


def test_thresholds_are_overridable_series_with_documented_defaults() -> None:
    (group,) = (group for group in rule_groups() if group["name"] == "cerby-exporter.thresholds")
    found = {}
    for rule in group["rules"]:
        name = rule["record"].removeprefix("cerby:threshold:")
        match = re.fullmatch(
            rf"cerby:threshold_override:{name} or vector\(([\d.]+)\)", rule["expr"]
        )
        assert match, rule
        found[name] = float(match.group(1))
    assert found == THRESHOLDS
    # No number hides in an alert that a threshold should carry.
    for rule in alerts():
        if "Stuck" in rule["alert"] or rule["alert"] in (
            "CerbyJobDataStale",
            "CerbyApiErrorsHigh",
            "CerbyWebhooksSilent",
        ):
            assert "cerby:threshold:" in rule["expr"]
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    for name, default in THRESHOLDS.items():
        assert f"`cerby:threshold_override:{name}` | {default:g} |" in doc


def test_recording_rules_follow_naming_and_are_used() -> None:
    names = recorded_names()
    for name in names:
        assert re.fullmatch(r"cerby:[a-z_]+:[a-z_]+", name), name
    used = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    # Every recorded series feeds an alert or a dashboard (checked in test_dashboards).
    assert {"cerby:job_failed:info", "cerby:job_in_progress:age_seconds"} <= used
    assert {n for n in used if ":" in n} <= names | {
        f"cerby:threshold_override:{name}" for name in THRESHOLDS
    }


def webhook_rule(name: str) -> dict[str, Any]:
    (rule,) = (rule for rule in alerts() if rule["alert"] == name)
    return rule


def test_webhook_alerts_read_the_receivers_series_per_exporter() -> None:
    """Each watches one result of the receiver's counters (or the dropped jobs), summed per
    scrape target, so one exporter's rotation is not another's."""
    for name, needle in (
        ("CerbyWebhookBadSignature", 'cerby_webhook_requests_total{result="bad_signature"}'),
        ("CerbyWebhookUnknownKey", 'cerby_webhook_requests_total{result="unknown_key"}'),
        ("CerbyJobsDropped", "cerby_jobs_dropped_total"),
    ):
        expr = webhook_rule(name)["expr"]
        assert needle in expr, name
        assert "sum by (job, instance)" in expr, name
        assert re.search(r"increase\([^)]*\[15m\]\)", expr), name


def test_webhook_silence_waits_for_the_threshold_of_uptime() -> None:
    """The silence alert needs the receiver's series (absent without one) and an exporter up
    longer than the threshold: a restart, or a lost state file, does not page."""
    expr = webhook_rule("CerbyWebhooksSilent")["expr"]
    assert metric_names(expr) == {
        "cerby_webhook_last_event_timestamp_seconds",
        "process_start_time_seconds",
        "cerby:threshold:webhook_silence_seconds",
    }
    assert expr.count("cerby:threshold:webhook_silence_seconds") == 2
    assert "and on (job, instance)" in expr


def test_rule_file_is_a_plain_prometheus_rule_file() -> None:
    """The Helm chart embeds it as it is: nothing but `groups`, in this order."""
    document = load_yaml(RULES_FILE)
    assert set(document) == {"groups"}
    assert [group["name"] for group in document["groups"]] == [
        "cerby-exporter.thresholds",
        "cerby-exporter.records",
        "cerby-exporter.jobs",
        "cerby-exporter.exporter",
    ]
