"""A failed access removal that only a webhook told of reaches a real Prometheus as an alert."""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path

import httpx
import yaml

from tests.support import (
    RULES_FILE,
    WebhookKeys,
    clean_env,
    envelope,
    free_port,
    http_json,
    job_attributes,
    prometheus,
    run_service,
    wait_for,
)

API_KEY = "e2e-webhook-key"
LEARNED = "8c1f0e2a-3b4d-4e5f-8a6b-7c8d9e0f1a2b"
"""Configured nowhere: the exporter tracks it only because a webhook named it."""


def test_a_failed_removal_learned_from_a_webhook_fires_the_access_removal_alert(
    tmp_path: Path,
) -> None:
    sim_port, exporter_port = free_port(), free_port()
    simulator = f"http://127.0.0.1:{sim_port}"
    exporter = f"http://127.0.0.1:{exporter_port}"
    keys = WebhookKeys(tmp_path / "keys.yaml").write()
    sim_args = [sys.executable, "-m", "cerby_exporter.simulator", "--listen",
                f"127.0.0.1:{sim_port}", "--api-key", API_KEY, "--scenario", "empty"]  # fmt: skip
    exporter_args = [
        sys.executable, "-m", "cerby_exporter",
        "--api-url", f"{simulator}/api/v1",
        "--webhook.keys-file", str(keys.path),
        "--state.path", str(tmp_path / "state.sqlite"),
        "--web.listen-address", f"127.0.0.1:{exporter_port}",
        "--log.level", "warning",
    ]  # fmt: skip
    failed = job_attributes(
        status="error",
        canRetry=False,
        trigger="user_deprovisioned",
        workflowType="revoke_access",
        errorDetails={"errorType": "BadCredentials", "userRequired": True},
    )
    with run_service("simulator", sim_args, tmp_path) as sim:
        sim.wait_ready(f"{simulator}/_sim/stats")
        http_json(f"{simulator}/_sim/jobs/{LEARNED}", "PUT", failed)
        with run_service(
            "exporter", exporter_args, tmp_path, clean_env({"CERBY_API_KEY": API_KEY})
        ) as exp:
            exp.wait_ready(f"{exporter}/readyz")
            config = tmp_path / "prometheus.yml"
            config.write_text(prometheus_config(exporter), encoding="utf-8")
            with prometheus(config, tmp_path) as prom:
                body = envelope(LEARNED, application="twitter")
                answer = http_json_post(f"{exporter}/webhooks/cerby", body, keys.headers(body))
                assert answer == {"result": "accepted"}

                def fired() -> list[dict[str, object]] | None:
                    alerts = http_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
                    found = [
                        a
                        for a in alerts
                        if a["labels"]["alertname"] == "CerbyAccessRemovalJobFailed"
                        and a["state"] == "firing"
                    ]
                    return found or None

                alerts = wait_for("the access-removal alert", fired, timeout=60)
    assert [a["labels"]["job_id"] for a in alerts] == [LEARNED]  # type: ignore[index]
    labels = alerts[0]["labels"]
    assert isinstance(labels, dict)
    assert labels["severity"] == "critical"
    assert labels["provider"] == "twitter"


def http_json_post(url: str, body: bytes, headers: dict[str, str]) -> object:
    return httpx.post(url, content=body, headers=headers, timeout=10).json()


def prometheus_config(exporter: str) -> str:
    target = urllib.parse.urlsplit(exporter).netloc
    document = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": "cerby-exporter", "static_configs": [{"targets": [target]}]}
        ],
    }
    return yaml.safe_dump(document)
