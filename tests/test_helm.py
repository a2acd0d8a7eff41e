"""The Helm chart, rendered by Helm's own Go SDK (helm-python-sdk), as an install would render it.

Each install scenario is rendered for real; every core object is validated against the Kubernetes
OpenAPI schemas (kubernetes-validate, strict: unknown fields fail); the Prometheus Operator
objects, which it has no schema for, are checked field by field. The PrometheusRule must carry the
repository's rule file itself, and the dashboard ConfigMaps the repository's dashboards.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from cerby_exporter.jobids import parse_job_ids_file
from cerby_exporter.settings import Settings, env_of, flag_of
from tests import helm_render
from tests.support import DASHBOARDS_DIR, REPO, RULES_FILE

CHART_DIR = REPO / "helm" / "cerby-exporter"
DOCKERFILE = REPO / "Dockerfile"

RELEASE = "cerby-exporter"
NAMESPACE = "monitoring"
# Kubernetes version whose OpenAPI schemas the core objects are validated against.
KUBERNETES_VERSION = "1.35.0"
# A key that must never show up in the pod spec, in plain text or base64.
API_KEY = "ck_live_Zq81tV3xW0pL5nR7"

CORE_KINDS = frozenset(
    {
        "Deployment",
        "Service",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Ingress",
        "PersistentVolumeClaim",
    }
)
OPERATOR_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
JOB_A = "0b6a2a1e-6d0c-4a8e-9d55-2f3c1b7e9a10"
JOB_B = "6f1c9e2d-3b4a-4c5d-8e7f-9a0b1c2d3e4f"

Manifest = dict[str, Any]
Values = dict[str, Any]


def ci_values(name: str) -> Values:
    """A values file under the chart's ci/ (the files `ct lint` renders too)."""
    loaded: Values = yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())
    return loaded


MINIMAL: Values = {"config": {"workspace": "acme"}, "existingSecret": "cerby-api-key"}

SCENARIOS: dict[str, Values] = {
    # ci/default-values.yaml: the least a real install needs.
    "minimal": ci_values("default"),
    # ci/all-features-values.yaml: every optional part on (webhooks on a port of their own, an
    # Ingress, the state on a PersistentVolumeClaim), chart Secret.
    "all-features": ci_values("all-features"),
    # The webhook receiver on the metrics port, the state in an emptyDir with a size limit.
    "webhooks-shared-port": {
        **MINIMAL,
        "webhook": {"existingSecret": "cerby-webhook-keys", "ingress": {"enabled": True}},
        "state": {"emptyDir": {"sizeLimit": "512Mi"}},
        "networkPolicy": {"enabled": True},
    },
    # The state on a claim made outside the chart.
    "existing-claim": {
        **MINIMAL,
        "state": {"persistence": {"enabled": True, "existingClaim": "cerby-state"}},
    },
    "api-key": {"config": {"workspace": "acme"}, "apiKey": API_KEY, "jobIds": [JOB_A]},
    "existing-configmap": {
        **MINIMAL,
        "existingSecretKey": "token",
        "existingJobIdsConfigMap": "cerby-jobs",
        "existingJobIdsConfigMapKey": "ids.txt",
    },
    "demo": {"demo": True},
    # Helm's longest release name, with the objects whose names add to it.
    "long-release-name": {
        **MINIMAL,
        "jobIds": [JOB_A],
        "dashboards": {"enabled": True},
        "webhook": {"existingSecret": "keys", "ingress": {"enabled": True}},
        "state": {"persistence": {"enabled": True}},
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def release_name(scenario: str) -> str:
    if scenario == "long-release-name":
        return "platform-observability-cerby-automation-exporter-0001"  # 53 characters
    return RELEASE


def render_text(chart: helm.Chart, values: Values, name: str = RELEASE) -> dict[str, str]:
    return chart.render(values, name=name, namespace=NAMESPACE, is_install=True)


def render(chart: helm.Chart, values: Values, name: str = RELEASE) -> list[Manifest]:
    """Every object the chart renders for `values`, parsed."""
    objects: list[Manifest] = []
    for path, text in sorted(render_text(chart, values, name).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def only(objects: list[Manifest], kind: str) -> Manifest:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objects: list[Manifest]) -> Manifest:
    containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: Manifest = containers[0]
    return c


def env_of_container(objects: list[Manifest]) -> dict[str, Manifest]:
    env = container(objects).get("env", [])
    names = [var["name"] for var in env]
    assert len(names) == len(set(names)), f"duplicate env variables: {names}"
    return {var["name"]: var for var in env}


def mount_for(objects: list[Manifest], volume: str) -> Manifest:
    mounts: list[Manifest] = [m for m in container(objects)["volumeMounts"] if m["name"] == volume]
    assert len(mounts) == 1
    return mounts[0]


def volume(objects: list[Manifest], name: str) -> Manifest:
    volumes = only(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    found: list[Manifest] = [v for v in volumes if v["name"] == name]
    assert len(found) == 1
    return found[0]


def dockerfile_instruction(name: str) -> list[str]:
    """Arguments of every `name` instruction in the Dockerfile (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        line.split(None, 1)[1].strip()
        for line in text.splitlines()
        if line.strip() and line.split(None, 1)[0].upper() == name
    ]


# --- rendering and lint ---------------------------------------------------------------------


def test_default_values_fail_with_a_sentence_naming_the_missing_setting(chart: helm.Chart) -> None:
    """Without a key and a workspace the exporter cannot start, so the install stops early."""
    with pytest.raises(helm.HelmRenderError, match=r"set existingSecret .* or apiKey"):
        render(chart, {})
    with pytest.raises(helm.HelmRenderError, match=r"set config\.workspace .* or config\.apiUrl"):
        render(chart, {"existingSecret": "cerby-api-key"})


@pytest.mark.parametrize("name", ["chart defaults", "default", "all-features"])
def test_lint_strict_passes(name: str) -> None:
    # With the chart's own defaults too: in lint mode Helm reports `fail` calls as info only.
    values = None if name == "chart defaults" else ci_values(name)
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; the only info left is the optional icon.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert {m["error"] for m in report["messages"]} <= {"icon is recommended"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_core_objects_validate_against_kubernetes_schemas(chart: helm.Chart, scenario: str) -> None:
    objects = render(chart, SCENARIOS[scenario], release_name(scenario))
    kinds = {obj["kind"] for obj in objects}
    assert kinds <= CORE_KINDS | OPERATOR_KINDS, f"unvalidated kinds: {kinds - CORE_KINDS}"
    assert {"Deployment", "Service"} <= kinds
    for obj in objects:
        name = obj["metadata"]["name"]
        assert DNS_SUBDOMAIN.fullmatch(name), name
        assert len(name) <= 63, name
        assert obj["metadata"]["namespace"] == NAMESPACE
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == release_name(scenario)
        if obj["kind"] in CORE_KINDS:
            # Raises kubernetes_validate.ValidationError on a wrong or unknown field.
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_minimal_install_objects(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["minimal"])
    assert sorted(obj["kind"] for obj in objects) == [
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]


def test_all_features_objects(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["all-features"])
    kinds = {obj["kind"] for obj in objects}
    # All but the PodDisruptionBudget, which needs replicas the state volume does not allow.
    assert kinds == CORE_KINDS - {"PodDisruptionBudget"} | OPERATOR_KINDS
    dashboards = sorted(DASHBOARDS_DIR.glob("*.json"))
    # Job IDs plus one per dashboard.
    assert len(of_kind(objects, "ConfigMap")) == 1 + len(dashboards)


# --- the pod ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pod_is_hardened(chart: helm.Chart, scenario: str) -> None:
    objects = render(chart, SCENARIOS[scenario], release_name(scenario))
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    user, group = (int(part) for part in dockerfile_instruction("USER")[-1].split(":"))

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == user
    assert pod["securityContext"]["runAsGroup"] == group
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert host not in pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    # A writable /tmp on the read-only root filesystem.
    assert mount_for(objects, "tmp")["mountPath"] == "/tmp"
    assert "emptyDir" in volume(objects, "tmp")
    assert c["resources"]["requests"].keys() == {"cpu", "memory"}
    assert "memory" in c["resources"]["limits"]
    # No subPath anywhere: subPath mounts never see Secret or ConfigMap updates.
    assert all("subPath" not in m for m in c["volumeMounts"])


def test_ports_and_probes_match_the_image(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["minimal"])
    c = container(objects)
    (exposed,) = dockerfile_instruction("EXPOSE")
    port = int(exposed.split("/")[0])
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert env_of_container(objects)["CERBY_LISTEN_ADDRESS"]["value"] == f":{port}"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The image's ENTRYPOINT is the exporter; the chart only appends flags.
    assert "command" not in c
    assert c["image"] == f"ghcr.io/cerby-exporter/cerby-exporter:{chart.metadata['appVersion']}"
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_app_version_is_the_package_version(chart: helm.Chart) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart.metadata["appVersion"] == project["version"]
    digest = "sha256:" + "ab" * 32
    objects = render(chart, {**MINIMAL, "image": {"tag": "9.9.9", "digest": digest}})
    assert container(objects)["image"] == f"ghcr.io/cerby-exporter/cerby-exporter@{digest}"
    objects = render(chart, {**MINIMAL, "image": {"tag": "9.9.9"}})
    assert container(objects)["image"] == "ghcr.io/cerby-exporter/cerby-exporter:9.9.9"


def test_every_variable_and_flag_the_chart_sets_is_an_exporter_setting(chart: helm.Chart) -> None:
    """The chart configures the exporter through CERBY_* variables; each must be a real one."""
    known_env = {env_of(field) for field in Settings.model_fields}
    known_flags = {flag_of(field) for field in Settings.model_fields} - {None}
    for scenario, values in SCENARIOS.items():
        objects = render(chart, values, release_name(scenario))
        for name in env_of_container(objects):
            if name.startswith("CERBY_"):
                assert name in known_env, f"{scenario}: {name} is not an exporter setting"
        for arg in container(objects).get("args", []):
            assert arg.split("=", 1)[0] in known_flags, f"{scenario}: unknown flag {arg}"


def test_config_extra_args_and_env(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["all-features"])
    env = env_of_container(objects)
    assert env["CERBY_WORKSPACE"]["value"] == "acme"
    assert env["CERBY_CACHE_TTL"]["value"] == "30"
    # Integers stay integers (no 1e+06) whatever size.
    assert env["CERBY_MAX_JOBS"]["value"] == "1000000"
    assert env["CERBY_LOG_FORMAT"]["value"] == "json"
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.example.internal:3128"
    # Settings left empty stay the exporter's defaults, not copies of them.
    assert "CERBY_TERMINAL_CACHE_TTL" not in env
    assert "CERBY_API_URL" not in env
    assert container(objects)["args"] == ["--status-series=sparse"]

    demo = render(chart, SCENARIOS["demo"])
    assert container(demo)["args"] == ["--demo"]
    assert "CERBY_API_KEY_FILE" not in env_of_container(demo)
    assert "CERBY_JOB_IDS_FILE" not in env_of_container(demo)
    assert of_kind(demo, "Secret") == []


# --- the API key ------------------------------------------------------------------------------


def test_api_key_is_a_mounted_secret_file_never_in_the_pod_spec(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["api-key"])
    secret = only(objects, "Secret")
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["api-key"]).decode() == API_KEY

    env = env_of_container(objects)
    mount = mount_for(objects, "api-key")
    assert mount["readOnly"] is True
    source = volume(objects, "api-key")["secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    assert source["items"] == [{"key": "api-key", "path": "api-key"}]
    assert env["CERBY_API_KEY_FILE"] == {
        "name": "CERBY_API_KEY_FILE",
        "value": f"{mount['mountPath']}/api-key",
    }
    assert "CERBY_API_KEY" not in env
    assert all("valueFrom" not in var for var in env.values())
    deployment_text = yaml.safe_dump(only(objects, "Deployment"))
    assert API_KEY not in deployment_text
    assert secret["data"]["api-key"] not in deployment_text
    for obj in objects:
        if obj["kind"] != "Secret":
            assert API_KEY not in json.dumps(obj)


def test_existing_secret_is_used_and_none_is_created(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["existing-configmap"])
    assert of_kind(objects, "Secret") == []
    source = volume(objects, "api-key")["secret"]
    assert source["secretName"] == "cerby-api-key"
    # Any key of the existing Secret is projected to the same file name.
    assert source["items"] == [{"key": "token", "path": "api-key"}]
    assert env_of_container(objects)["CERBY_API_KEY_FILE"]["value"].endswith("/api-key")
    # An existing Secret wins over apiKey, which is then never rendered.
    objects = render(chart, {**SCENARIOS["existing-configmap"], "apiKey": API_KEY})
    assert of_kind(objects, "Secret") == []
    assert all(API_KEY not in json.dumps(obj) for obj in objects)


def test_a_literal_key_in_extra_env_is_refused(chart: helm.Chart) -> None:
    values = {**MINIMAL, "extraEnv": [{"name": "CERBY_API_KEY", "value": API_KEY}]}
    with pytest.raises(helm.HelmRenderError, match="do not put the API key in extraEnv"):
        render(chart, values)


# --- job IDs ----------------------------------------------------------------------------------


def test_job_ids_are_a_configmap_file_mounted_as_a_directory(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["all-features"])
    config_map = [cm for cm in of_kind(objects, "ConfigMap") if "job-ids" in cm["data"]]
    assert len(config_map) == 1
    # The exporter's own parser reads the rendered file back to the values' IDs.
    parsed = parse_job_ids_file(config_map[0]["data"]["job-ids"])
    assert parsed.bad_lines == ()
    assert list(parsed.ids) == [JOB_A, JOB_B]

    mount = mount_for(objects, "job-ids")
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    source = volume(objects, "job-ids")["configMap"]
    assert source["name"] == config_map[0]["metadata"]["name"]
    assert source["items"] == [{"key": "job-ids", "path": "job-ids"}]
    env = env_of_container(objects)
    assert env["CERBY_JOB_IDS_FILE"]["value"] == f"{mount['mountPath']}/job-ids"


def test_empty_job_ids_still_give_a_file_to_fill_later(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["minimal"])
    (config_map,) = of_kind(objects, "ConfigMap")
    parsed = parse_job_ids_file(config_map["data"]["job-ids"])
    assert parsed == type(parsed)((), ())


BASIC_AUTH = {
    "username": {"name": "scrape", "key": "username"},
    "password": {"name": "scrape", "key": "password"},
}


def test_web_config_is_a_mounted_secret_and_probes_follow_its_tls(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["all-features"])
    env = env_of_container(objects)
    assert env["CERBY_WEB_CONFIG_FILE"] == {
        "name": "CERBY_WEB_CONFIG_FILE",
        "value": "/etc/cerby-exporter/web/web-config.yml",
    }
    # The whole Secret, so that the certificate and key named in the config sit beside it.
    assert volume(objects, "web-config")["secret"] == {
        "secretName": "cerby-exporter-web",
        "defaultMode": 0o440,
    }
    assert mount_for(objects, "web-config") == {
        "name": "web-config",
        "mountPath": "/etc/cerby-exporter/web",
        "readOnly": True,
    }
    c = container(objects)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTPS"}
    assert c["livenessProbe"]["periodSeconds"] == chart.values["livenessProbe"]["periodSeconds"]

    # Basic auth only (no TLS): the file is passed, probes and scrapes stay plain HTTP.
    objects = render(
        chart,
        {**MINIMAL, "webConfig": {"existingSecret": "web", "key": "auth.yml"},
         "serviceMonitor": {"enabled": True, "basicAuth": BASIC_AUTH,
                            "tlsConfig": {"insecureSkipVerify": True}}},
    )  # fmt: skip
    assert env_of_container(objects)["CERBY_WEB_CONFIG_FILE"]["value"] == (
        "/etc/cerby-exporter/web/auth.yml"
    )
    assert "scheme" not in container(objects)["livenessProbe"]["httpGet"]
    (endpoint,) = only(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in endpoint
    assert "tlsConfig" not in endpoint  # meaningless over plain HTTP
    assert endpoint["basicAuth"] == BASIC_AUTH

    # Probes with another handler (client certificates required): it replaces the default
    # httpGet, as a probe may have only one; the pod stays valid.
    tcp = {"tcpSocket": {"port": "http"}, "periodSeconds": 30}
    values = {**SCENARIOS["all-features"], "livenessProbe": tcp, "readinessProbe": tcp}
    objects = render(chart, values)
    c = container(objects)
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert "httpGet" not in probe
        assert probe["tcpSocket"] == {"port": "http"}
        assert probe["periodSeconds"] == 30
    kubernetes_validate.validate(only(objects, "Deployment"), KUBERNETES_VERSION, strict=True)

    # Names that YAML would read otherwise are quoted.
    objects = render(chart, {**MINIMAL, "webConfig": {"existingSecret": "0123", "key": "a: b"}})
    assert volume(objects, "web-config")["secret"]["secretName"] == "0123"
    assert env_of_container(objects)["CERBY_WEB_CONFIG_FILE"]["value"] == (
        "/etc/cerby-exporter/web/a: b"
    )

    # Without a web config: nothing of it in the pod.
    objects = render(chart, MINIMAL)
    assert "CERBY_WEB_CONFIG_FILE" not in env_of_container(objects)
    assert "web-config" not in {
        v["name"] for v in only(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }


def test_tls_without_a_web_config_secret_is_refused(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"webConfig\.tls needs webConfig\.existingSec"):
        render(chart, {**MINIMAL, "webConfig": {"tls": True}})


def test_existing_job_ids_configmap(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["existing-configmap"])
    assert of_kind(objects, "ConfigMap") == []
    source = volume(objects, "job-ids")["configMap"]
    assert source["name"] == "cerby-jobs"
    assert source["items"] == [{"key": "ids.txt", "path": "job-ids"}]
    assert "subPath" not in mount_for(objects, "job-ids")


# --- Prometheus Operator objects --------------------------------------------------------------


def test_service_monitor(chart: helm.Chart) -> None:
    values = SCENARIOS["all-features"]
    objects = render(chart, values)
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert set(spec) == {"jobLabel", "selector", "namespaceSelector", "endpoints"}
    service = only(objects, "Service")
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The `job` label Prometheus gives the target is the Service's value of jobLabel, which is
    # what the shipped rules and dashboards select on.
    assert service["metadata"]["labels"][spec["jobLabel"]] == "cerby-exporter"
    (endpoint,) = spec["endpoints"]
    assert endpoint == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "20s",
        "honorLabels": False,
        "relabelings": values["serviceMonitor"]["relabelings"],
        # The web config turns TLS and basic auth on: Prometheus scrapes with both.
        "scheme": "https",
        "tlsConfig": values["serviceMonitor"]["tlsConfig"],
        "basicAuth": values["serviceMonitor"]["basicAuth"],
    }
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


def test_scrape_timeout_defaults_fit_the_interval(chart: helm.Chart) -> None:
    defaults = chart.values["serviceMonitor"]

    def seconds(duration: str) -> int:
        match = re.fullmatch(r"(\d+)([smh])", duration)
        assert match, duration
        return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]

    assert seconds(defaults["scrapeTimeout"]) <= seconds(defaults["interval"])


def shipped_rules() -> Manifest:
    loaded: Manifest = yaml.safe_load(RULES_FILE.read_text())
    return loaded


def test_chart_links_the_repository_dashboards_rather_than_copying_them(
    chart: helm.Chart,
) -> None:
    link = CHART_DIR / "dashboards"
    assert link.is_symlink()
    assert link.resolve() == DASHBOARDS_DIR.resolve()
    # What Helm loaded as chart files is byte for byte the repository's file.
    files = {f["name"]: f["data"] for f in chart.files}
    assert files["dashboards/alerts/cerby-exporter.rules.yml"] == RULES_FILE.read_text()
    for path in DASHBOARDS_DIR.glob("*.json"):
        assert files[f"dashboards/{path.name}"] == path.read_text()


def test_packaged_chart_carries_the_files_themselves(tmp_path: Path) -> None:
    """`helm package` follows the link, so a chart archive needs no repository beside it."""
    archive = helm.package(CHART_DIR, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        objects = render(packaged, {**MINIMAL, "prometheusRule": {"enabled": True}})
        assert only(objects, "PrometheusRule")["spec"]["groups"] == shipped_rules()["groups"]
        names = {f["name"] for f in packaged.files}
    assert "dashboards/alerts/cerby-exporter.rules.yml" in names
    assert {f"dashboards/{path.name}" for path in DASHBOARDS_DIR.glob("*.json")} <= names
    # Test values and the rule tests stay out of the archive (.helmignore).
    assert not any(name.startswith(("ci/", "dashboards/alerts/tests/")) for name in names)


def test_prometheus_rule_is_the_shipped_rule_file(chart: helm.Chart, tmp_path: Path) -> None:
    objects = render(chart, SCENARIOS["all-features"])
    rule = only(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(rule["spec"]) == {"groups"}
    groups = shipped_rules()["groups"]
    assert groups, "the shipped rule file has no groups"
    assert rule["spec"]["groups"] == groups
    # And Prometheus itself loads the rendered groups.
    rendered = tmp_path / "rendered.rules.yml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rendered)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_configmaps_for_the_grafana_sidecar(chart: helm.Chart) -> None:
    dashboards = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert dashboards, "no dashboards/*.json shipped"
    objects = render(chart, {**MINIMAL, "dashboards": {"enabled": True, "folder": "Identity"}})
    config_maps = [cm for cm in of_kind(objects, "ConfigMap") if "job-ids" not in cm["data"]]
    assert len(config_maps) == len(dashboards)
    by_file: dict[str, Manifest] = {}
    for cm in config_maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "Identity"
        assert DNS_SUBDOMAIN.fullmatch(cm["metadata"]["name"])
        # Far from the 1 MiB object limit (etcd and the last-applied annotation).
        assert len(json.dumps(cm)) < 512 * 1024
        (file_name,) = cm["data"]
        by_file[file_name] = cm
    assert sorted(by_file) == [path.name for path in dashboards]
    for path in dashboards:
        assert json.loads(by_file[path.name]["data"][path.name]) == json.loads(path.read_text())
        assert by_file[path.name]["data"][path.name] == path.read_text()


def test_dashboards_go_to_the_namespace_the_sidecar_watches(chart: helm.Chart) -> None:
    values = {
        **MINIMAL,
        "dashboards": {"enabled": True, "namespace": "grafana", "label": "dash", "labelValue": "y"},
    }
    config_maps = [
        cm for cm in of_kind(render(chart, values), "ConfigMap") if "job-ids" not in cm["data"]
    ]
    assert config_maps
    for cm in config_maps:
        assert cm["metadata"]["namespace"] == "grafana"
        assert cm["metadata"]["labels"]["dash"] == "y"
        assert "grafana_dashboard" not in cm["metadata"]["labels"]


# --- NetworkPolicy and PodDisruptionBudget ----------------------------------------------------


def test_network_policy(chart: helm.Chart) -> None:
    values = SCENARIOS["all-features"]
    objects = render(chart, values)
    policy = only(objects, "NetworkPolicy")["spec"]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [
        {
            "ports": [{"port": "http", "protocol": "TCP"}],
            "from": values["networkPolicy"]["ingressFrom"],
        },
        # The webhook receiver has a port of its own, open to the ingress controller only.
        {
            "ports": [{"port": "webhook", "protocol": "TCP"}],
            "from": values["networkPolicy"]["webhookFrom"],
        },
    ]
    egress_ports = [(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]]
    assert egress_ports == [(53, "UDP"), (53, "TCP"), (443, "TCP")]

    ingress_only = render(chart, {**MINIMAL, "networkPolicy": {"enabled": True}})
    policy = only(ingress_only, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert "egress" not in policy

    # The receiver on the metrics port, with no webhookFrom: that port is open to every source.
    shared = render(chart, SCENARIOS["webhooks-shared-port"])
    assert only(shared, "NetworkPolicy")["spec"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}]},
        {"ports": [{"port": "http", "protocol": "TCP"}]},
    ]


@pytest.mark.parametrize(
    ("values", "min_available"),
    [
        ({"replicaCount": 1}, None),
        ({"replicaCount": 2}, 1),
        ({"replicaCount": 3, "pdb": {"minAvailable": "50%"}}, "50%"),
        ({"replicaCount": 3, "pdb": {"enabled": False}}, None),
    ],
)
def test_pod_disruption_budget_only_with_replicas(
    chart: helm.Chart, values: Values, min_available: int | str | None
) -> None:
    objects = render(chart, {**MINIMAL, **values})
    budgets = of_kind(objects, "PodDisruptionBudget")
    if min_available is None:
        assert budgets == []
        return
    (budget,) = budgets
    assert budget["spec"]["minAvailable"] == min_available
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    kubernetes_validate.validate(budget, KUBERNETES_VERSION, strict=True)


# --- values schema ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": 1.5}, "/replicaCount"),
        ({"replicas": 2}, "'replicas' not allowed"),
        ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled"),
        ({"serviceMonitor": {"enable": True}}, "'enable' not allowed"),
        ({"serviceMonitor": {"interval": "every minute"}}, "/serviceMonitor/interval"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": "ghcr.io/x/y:1"}, "/image"),
        ({"jobIds": ["not-a-job-id"]}, "/jobIds/0"),
        ({"jobIds": JOB_A}, "/jobIds"),
        ({"extraArgs": "--demo"}, "/extraArgs"),
        ({"extraEnv": [{"value": "x"}]}, "/extraEnv/0"),
        ({"config": {"cacheTtl": 0}}, "/config/cacheTtl"),
        ({"config": {"workspace": "https://acme.cerby.com"}}, "/config/workspace"),
        ({"config": {"logLevel": "verbose"}}, "/config/logLevel"),
        ({"apiKey": 12345}, "/apiKey"),
        ({"resources": "small"}, "/resources"),
        ({"pdb": {"minAvailable": "half"}}, "/pdb/minAvailable"),
        ({"webConfig": {"tls": "yes"}}, "/webConfig/tls"),
        ({"webConfig": {"file": "web.yml"}}, "'file' not allowed"),
        ({"webhook": {"port": "10367"}}, "/webhook/port"),
        ({"webhook": {"port": 70000}}, "/webhook/port"),
        ({"webhook": {"path": "webhooks/cerby"}}, "/webhook/path"),
        ({"webhook": {"ingress": {"host": "https://hooks.example.com"}}}, "/webhook/ingress/host"),
        ({"webhook": {"ingress": {"tls": [{"secret": "x"}]}}}, "'secret' not allowed"),
        ({"webhook": {"keysFile": "keys.yaml"}}, "'keysFile' not allowed"),
        ({"state": {"persistence": {"size": "lots"}}}, "/state/persistence/size"),
        ({"state": {"persistence": {"enable": True}}}, "'enable' not allowed"),
        (
            {"networkPolicy": {"webhookFrom": {"namespaceSelector": {}}}},
            "/networkPolicy/webhookFrom",
        ),
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: Values, complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as schema_error:
        chart.validate_schema({**MINIMAL, **values})
    assert complaint in str(schema_error.value)
    # An install (render) refuses them the same way.
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render(chart, {**MINIMAL, **values})


def test_schema_accepts_the_documented_values(chart: helm.Chart) -> None:
    chart.validate_schema({})  # the defaults of values.yaml
    for values in SCENARIOS.values():
        chart.validate_schema(values)
    # A parent chart's globals reach a subchart's values.
    chart.validate_schema({**MINIMAL, "global": {"imageRegistry": "registry.local"}})
    schema = chart.schema
    assert schema is not None
    assert schema["additionalProperties"] is False
    documented = {"replicaCount", "image", "existingSecret", "apiKey", "jobIds", "resources"}
    documented |= {"serviceMonitor", "prometheusRule", "dashboards", "networkPolicy"}
    documented |= {"extraArgs", "extraEnv", "webhook", "state"}
    assert documented <= set(schema["properties"])
    assert set(chart.values) | {"global"} == set(schema["properties"])


# --- webhooks and the state file ------------------------------------------------------------


WEBHOOK_DIR = "/etc/cerby-exporter/webhook"


def dockerfile_env() -> dict[str, str]:
    pairs: dict[str, str] = {}
    for args in dockerfile_instruction("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            pairs[key] = value
    return pairs


def test_webhook_keys_are_a_mounted_secret_named_in_the_environment(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["all-features"])
    env = env_of_container(objects)
    # The whole Secret, read-only: a keys file names its secret files relative to itself.
    assert volume(objects, "webhook-keys")["secret"] == {
        "secretName": "cerby-webhook-keys",
        "defaultMode": 0o440,
    }
    assert mount_for(objects, "webhook-keys") == {
        "name": "webhook-keys",
        "mountPath": WEBHOOK_DIR,
        "readOnly": True,
    }
    assert env["CERBY_WEBHOOK_KEYS_FILE"]["value"] == f"{WEBHOOK_DIR}/keys.yaml"
    assert env["CERBY_WEBHOOK_PATH"]["value"] == "/webhooks/cerby"
    # A port of its own: the exporter's second listener, a container port and a Service port.
    assert env["CERBY_WEBHOOK_LISTEN_ADDRESS"]["value"] == ":10367"
    ports = {port["name"]: port for port in container(objects)["ports"]}
    assert ports["webhook"] == {"name": "webhook", "containerPort": 10367, "protocol": "TCP"}
    service_ports = {port["name"]: port for port in only(objects, "Service")["spec"]["ports"]}
    assert service_ports["webhook"] == {
        "name": "webhook",
        "port": 10367,
        "targetPort": "webhook",
        "protocol": "TCP",
    }

    values = {**MINIMAL, "webhook": {"existingSecret": "0123", "key": "cerby.yml", "path": "/in"}}
    env = env_of_container(render(chart, values))
    assert env["CERBY_WEBHOOK_KEYS_FILE"]["value"] == f"{WEBHOOK_DIR}/cerby.yml"
    assert env["CERBY_WEBHOOK_PATH"]["value"] == "/in"
    assert "CERBY_WEBHOOK_LISTEN_ADDRESS" not in env

    # Without a keys Secret the receiver is off: nothing of it in the pod or the Service.
    objects = render(chart, MINIMAL)
    assert not {name for name in env_of_container(objects) if name.startswith("CERBY_WEBHOOK")}
    spec = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert "webhook-keys" not in {v["name"] for v in spec["volumes"]}
    assert [port["name"] for port in container(objects)["ports"]] == ["http"]
    assert [port["name"] for port in only(objects, "Service")["spec"]["ports"]] == ["http"]


def test_state_volume_is_where_the_image_keeps_its_state(chart: helm.Chart) -> None:
    """The chart mounts the state at the image's VOLUME and names the image's state file."""
    (volume_path,) = (json.loads(args)[0] for args in dockerfile_instruction("VOLUME"))
    image_state_path = dockerfile_env()["CERBY_STATE_PATH"]
    for scenario, values in SCENARIOS.items():
        objects = render(chart, values, release_name(scenario))
        assert mount_for(objects, "state") == {"name": "state", "mountPath": volume_path}
        assert env_of_container(objects)["CERBY_STATE_PATH"]["value"] == image_state_path
    assert Path(image_state_path).parent == Path(volume_path)

    # By default an emptyDir, with the pods replaced one by one.
    objects = render(chart, MINIMAL)
    assert volume(objects, "state") == {"name": "state", "emptyDir": {}}
    assert "strategy" not in only(objects, "Deployment")["spec"]
    assert of_kind(objects, "PersistentVolumeClaim") == []
    objects = render(chart, SCENARIOS["webhooks-shared-port"])
    assert volume(objects, "state")["emptyDir"] == {"sizeLimit": "512Mi"}


def test_state_on_a_claim_has_one_writer(chart: helm.Chart) -> None:
    objects = render(chart, SCENARIOS["all-features"])
    claim = only(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{RELEASE}-state"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "2Gi"}},
    }
    deployment = only(objects, "Deployment")["spec"]
    assert volume(objects, "state") == {
        "name": "state",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    # The old pod lets go of the volume (and of the SQLite file) before the new one starts.
    assert deployment["strategy"] == {"type": "Recreate"}
    assert deployment["replicas"] == 1

    objects = render(chart, SCENARIOS["existing-claim"])
    assert of_kind(objects, "PersistentVolumeClaim") == []
    assert volume(objects, "state")["persistentVolumeClaim"] == {"claimName": "cerby-state"}
    assert only(objects, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    # No storage class given: the claim gets the cluster's default.
    values = {**MINIMAL, "state": {"persistence": {"enabled": True}}}
    claim = only(render(chart, values), "PersistentVolumeClaim")
    assert "storageClassName" not in claim["spec"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"

    with pytest.raises(helm.HelmRenderError, match=r"state\.persistence needs replicaCount 1"):
        render(chart, {**values, "replicaCount": 2})


def test_ingress_publishes_the_webhook_path_and_nothing_else(chart: helm.Chart) -> None:
    values = SCENARIOS["all-features"]
    objects = render(chart, values)
    ingress = only(objects, "Ingress")
    service = only(objects, "Service")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == values["webhook"]["ingress"]["tls"]
    assert ingress["metadata"]["annotations"] == values["webhook"]["ingress"]["annotations"]
    (rule,) = spec["rules"]
    assert rule["host"] == "cerby-webhooks.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == env_of_container(objects)["CERBY_WEBHOOK_PATH"]["value"]
    assert path["pathType"] == "Exact"
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    # To the webhook's own Service port, which leads to its own container port.
    assert backend["port"] == {"name": "webhook"}
    by_name = {port["name"]: port for port in service["spec"]["ports"]}
    assert by_name["webhook"]["targetPort"] == "webhook"

    # Without webhook.port, to the metrics port (the exporter serves the path there too); no
    # host matches every host, no class the cluster's default.
    ingress = only(render(chart, SCENARIOS["webhooks-shared-port"]), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert "host" not in rule
    assert "ingressClassName" not in ingress["spec"]
    assert "tls" not in ingress["spec"]
    assert rule["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "http"}

    assert of_kind(render(chart, MINIMAL), "Ingress") == []


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"webhook": {"ingress": {"enabled": True}}}, r"webhook\.ingress and webhook\.port need"),
        ({"webhook": {"port": 10367}}, r"webhook\.ingress and webhook\.port need"),
        ({"webhook": {"existingSecret": "k", "port": 10366}}, r"must differ from the metrics"),
    ],
)
def test_webhook_values_that_cannot_work_are_refused(
    chart: helm.Chart, values: Values, complaint: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=complaint):
        render(chart, {**MINIMAL, **values})


def test_config_values_become_the_matching_variables(chart: helm.Chart) -> None:
    """Every `config` key is passed as CERBY_<KEY IN UPPER SNAKE CASE>, a real setting."""
    config = {
        "apiUrl": "https://acme.cerby.com/api/v1",
        "cacheTtl": 0.5,
        "terminalCacheTtl": 7200,
        "maxConcurrency": 8,
        "requestTimeout": 12.5,
        "maxJobs": 1000000,
        "maxStaleness": 600,
        "logLevel": "debug",
        "logFormat": "json",
        "jobRetention": 86400,
        "workspace": "acme",
    }
    assert set(config) == set(chart.values["config"])
    env = env_of_container(render(chart, {**MINIMAL, "config": config}))
    known = {env_of(field) for field in Settings.model_fields}
    for key, value in config.items():
        name = "CERBY_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()
        assert name in known, name
        assert env[name]["value"] == str(value)


def test_make_chart_prints_the_manifests_and_lints_them(chart: helm.Chart) -> None:
    """`make chart` runs tests/helm_render.py: every object of an install, then a strict lint."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^chart: .*\n\t\$\(BIN\)/python -m tests\.helm_render ", makefile, re.M)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helm_render",
            str(CHART_DIR / "ci" / "all-features-values.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "lint --strict: 0 problem(s)" in result.stderr
    # Exactly what an install renders.
    printed = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert printed == render(chart, SCENARIOS["all-features"])
    # Without a values file: the least a real install needs, Deployment included.
    result = subprocess.run(
        [sys.executable, "-m", "tests.helm_render"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert "Deployment" in kinds


def test_chart_readme_is_generated_from_the_values_comments(chart: helm.Chart) -> None:
    """Every value is documented in values.yaml, and the README's table is made from that."""
    comments = helm_render.value_comments((CHART_DIR / "values.yaml").read_text())
    assert helm_render.undocumented(chart.values, comments) == []
    readme = (CHART_DIR / "README.md").read_text()
    assert readme == helm_render.readme(), "run: python -m tests.helm_render --readme"
    # A documented map is one row with its whole default; its keys get none of their own.
    assert '| `podSecurityContext` | `{"runAsNonRoot": true, ' in readme
    assert "`podSecurityContext.runAsUser`" not in readme
    assert "| `webhook.port` | `null` | A port of its own" in readme
    assert '| `state.persistence.size` | `"1Gi"` |' in readme


# --- NOTES ------------------------------------------------------------------------------------


def test_notes_tell_how_to_reach_the_metrics(chart: helm.Chart) -> None:
    notes = render_text(chart, {**MINIMAL, "serviceMonitor": {"enabled": True}})[
        "cerby-exporter/templates/NOTES.txt"
    ]
    assert f"kubectl --namespace {NAMESPACE} port-forward service/{RELEASE} 10366:10366" in notes
    assert "curl -s http://127.0.0.1:10366/metrics" in notes
    assert f"http://{RELEASE}.{NAMESPACE}.svc:10366/metrics" in notes
    assert 'job="cerby-exporter"' in notes
    assert "No job IDs are configured yet" in notes
    assert (
        "DEMO MODE" in render_text(chart, SCENARIOS["demo"])["cerby-exporter/templates/NOTES.txt"]
    )
    assert "webhook" not in notes

    def notes_of(scenario: str) -> str:
        return render_text(chart, SCENARIOS[scenario])["cerby-exporter/templates/NOTES.txt"]

    notes = notes_of("all-features")
    assert "URL https://cerby-webhooks.example.com/webhooks/cerby" in notes
    assert f"PersistentVolumeClaim {RELEASE}-state" in notes
    notes = notes_of("webhooks-shared-port")
    assert "URL https://<the Ingress' host>/webhooks/cerby" in notes
    assert "in an emptyDir: it survives container restarts, not the pod's" in notes


# --- the documented install -------------------------------------------------------------------


def merge_into(base: Values, extra: Values) -> Values:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = value
    return base


def test_documented_helm_install_renders_with_all_it_promises(chart: helm.Chart) -> None:
    """The install command in docs/deploy.md, its --set flags parsed by Helm's own parser."""
    text = (REPO / "docs" / "deploy.md").read_text()
    match = re.search(
        r"^helm install cerby-exporter \./helm/cerby-exporter (.*?)\n```", text, re.M | re.S
    )
    assert match, "no helm install command in docs/deploy.md"
    words = match[1].replace("\\\n", " ").split()
    values: Values = {}
    for flag, argument in itertools.pairwise(words):
        if flag == "--set":
            merge_into(values, helm.parse_set_string(argument))
        elif flag == "--set-json":
            merge_into(values, helm.parse_set_json(argument.strip("'")))
    assert values["existingSecret"] == "cerby-api-key"
    objects = render(chart, values)
    assert {"ServiceMonitor", "PrometheusRule"} <= {obj["kind"] for obj in objects}
    dashboards = [cm for cm in of_kind(objects, "ConfigMap") if "job-ids" not in cm["data"]]
    assert len(dashboards) == len(list(DASHBOARDS_DIR.glob("*.json")))
    (job_ids,) = [cm for cm in of_kind(objects, "ConfigMap") if "job-ids" in cm["data"]]
    assert parse_job_ids_file(job_ids["data"]["job-ids"]).ids == (JOB_A,)
    assert only(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )
