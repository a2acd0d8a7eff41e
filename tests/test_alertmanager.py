"""The example Alertmanager configuration: valid for amtool, and, in a real Alertmanager,
routing access-removal failures to security and the rest to operations, one group per Cerby
job, with job alerts inhibited while the exporter cannot reach Cerby, and webhook silence
while deliveries are refused."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ALERTMANAGER_CONFIG,
    alertmanager,
    http_json,
    load_yaml,
    tool,
    wait_for,
)

EXPORTER = {"job": "cerby-exporter", "instance": "exporter-a:10366"}
OTHER_EXPORTER = {"job": "cerby-exporter", "instance": "exporter-b:10366"}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("amtool"), *args], capture_output=True, text=True, timeout=30, check=False
    )


def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": name},
        "startsAt": datetime.now(UTC).isoformat(),
        "generatorURL": "http://127.0.0.1/graph",
    }


def test_amtool_check_config_passes() -> None:
    result = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert " - 3 inhibit rules" in result.stdout
    assert " - 2 receivers" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=CerbyAccessRemovalJobFailed", "severity=critical", "access_removal=true"],
         "security"),
        (["alertname=CerbyAccessRemovalJobStuck", "severity=critical", "access_removal=true"],
         "security"),
        (["alertname=CerbyJobFailedNeedsPerson", "severity=warning", "access_removal=false"],
         "operations"),
        (["alertname=CerbyJobStuck", "severity=warning", "access_removal=false"], "operations"),
        (["alertname=CerbyApiKeyRejected", "severity=critical"], "operations"),
        (["alertname=CerbyExporterDown", "severity=warning"], "operations"),
        (["alertname=CerbyWebhookUnknownKey", "severity=warning"], "operations"),
        (["alertname=CerbyWebhooksSilent", "severity=warning"], "operations"),
    ],
)  # fmt: skip
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    result = amtool(
        "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", "job_id=j-1", *labels
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def test_grouping_is_per_cerby_job() -> None:
    route = load_yaml(ALERTMANAGER_CONFIG)["route"]
    assert route["group_by"] == ["job_id"]
    assert route["receiver"] == "operations"
    for receiver in load_yaml(ALERTMANAGER_CONFIG)["receivers"]:
        assert receiver["webhook_configs"][0]["url"].startswith("https://")
        assert receiver["webhook_configs"][0]["send_resolved"] is True


@pytest.fixture(scope="module")
def am_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work: Path = tmp_path_factory.mktemp("alertmanager")
    with alertmanager(ALERTMANAGER_CONFIG, work) as url:
        yield url


def alerts_by_job(url: str) -> dict[str, dict[str, Any]]:
    found = http_json(f"{url}/api/v2/alerts")
    return {
        a["labels"].get("job_id", f"{a['labels']['alertname']}@{a['labels']['instance']}"): a
        for a in found
    }


def test_real_alertmanager_routes_groups_and_inhibits(am_url: str) -> None:
    http_json(
        f"{am_url}/api/v2/alerts",
        "POST",
        [
            alert("CerbyAccessRemovalJobFailed", "critical", job_id="revoke-1",
                  access_removal="true", **EXPORTER),
            alert("CerbyJobFailedRetryable", "warning", job_id="retry-1",
                  access_removal="false", **EXPORTER),
            alert("CerbyJobDataStale", "warning", job_id="retry-1", **EXPORTER),
            # exporter-b cannot reach Cerby: its job alerts are held back.
            alert("CerbyApiDown", "warning", **OTHER_EXPORTER),
            alert("CerbyAccessRemovalJobFailed", "critical", job_id="revoke-b",
                  access_removal="true", **OTHER_EXPORTER),
            alert("CerbyApiErrorsHigh", "warning", **OTHER_EXPORTER),
            # exporter-a's deliveries are refused: its silence has a known cause.
            alert("CerbyWebhookUnknownKey", "warning", **EXPORTER),
            alert("CerbyWebhooksSilent", "warning", **EXPORTER),
            # exporter-b's receiver is silent with no refused delivery: reported.
            alert("CerbyWebhooksSilent", "warning", **OTHER_EXPORTER),
        ],
    )  # fmt: skip

    def all_in() -> dict[str, dict[str, Any]] | None:
        found = alerts_by_job(am_url)
        inhibited = found.get("revoke-b", {}).get("status", {}).get("inhibitedBy")
        return found if len(found) == 8 and inhibited else None

    found = wait_for("Alertmanager to take the alerts", all_in, timeout=15)

    def receivers(key: str) -> list[str]:
        return [r["name"] for r in found[key]["receivers"]]

    assert receivers("revoke-1") == ["security"]
    assert receivers("revoke-b") == ["security"]
    assert receivers("retry-1") == ["operations"]
    assert receivers(f"CerbyApiDown@{OTHER_EXPORTER['instance']}") == ["operations"]
    assert found["revoke-1"]["status"]["state"] == "active"
    assert found["retry-1"]["status"]["state"] == "active"
    assert found["revoke-b"]["status"]["state"] == "suppressed"
    b, a = OTHER_EXPORTER["instance"], EXPORTER["instance"]
    assert found[f"CerbyApiErrorsHigh@{b}"]["status"]["state"] == "suppressed"
    assert found[f"CerbyApiDown@{b}"]["status"]["state"] == "active"
    assert found[f"CerbyWebhookUnknownKey@{a}"]["status"]["state"] == "active"
    assert found[f"CerbyWebhooksSilent@{a}"]["status"]["state"] == "suppressed"
    assert found[f"CerbyWebhooksSilent@{b}"]["status"]["state"] == "active"

    # One group per Cerby job: both alerts about retry-1 travel together.
    groups = http_json(f"{am_url}/api/v2/alerts/groups")
    by_key = {
        (g["receiver"]["name"], tuple(sorted(g["labels"].items()))): sorted(
            a["labels"]["alertname"] for a in g["alerts"]
        )
        for g in groups
    }
    assert by_key[("operations", (("job_id", "retry-1"),))] == [
        "CerbyJobDataStale",
        "CerbyJobFailedRetryable",
    ]
    assert by_key[("security", (("job_id", "revoke-1"),))] == ["CerbyAccessRemovalJobFailed"]
    exporter_group = (("instance", "exporter-b:10366"), ("job", "cerby-exporter"))
    assert by_key[("operations", exporter_group)] == [
        "CerbyApiDown",
        "CerbyApiErrorsHigh",
        "CerbyWebhooksSilent",
    ]
