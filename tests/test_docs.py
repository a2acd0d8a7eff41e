"""The documentation says what the exporter does: settings, metrics and the quick start."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx

from cerby_exporter.settings import Settings, env_of, flag_of
from cerby_exporter.signatures import KeysSource
from cerby_exporter.simulator import Simulator, Workspace
from cerby_exporter.state import StateStore
from tests.support import (
    API_KEY,
    FAILED,
    FINISHED,
    MISSING,
    REPO,
    WebhookKeys,
    small_workspace,
    start_exporter,
)

README = (REPO / "README.md").read_text()
METRICS_DOC = (REPO / "docs" / "metrics.md").read_text()


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_configuration_table_lists_every_setting() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `") or line.startswith("| (")]
    assert len(rows) == len(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        row = next(r for r in rows if f"`{env_of(name)}`" in r)
        flag = flag_of(name)
        assert (f"`{flag}`" if flag else "(none)") in row
        default = info.default
        if isinstance(default, bool):
            assert f"`{str(default).lower()}`" in row
        elif isinstance(default, float | int) and not isinstance(default, bool):
            assert f"`{default:g}`" in row
        elif isinstance(default, str):
            assert f"`{default}`" in row


def live_metric_names(tmp_path: Path) -> set[str]:
    """Every family a real exporter writes, with the webhook receiver on."""
    keys = WebhookKeys(tmp_path / "keys.yaml").write()
    with Simulator(Workspace(small_workspace(), API_KEY)) as sim:
        running = start_exporter(
            Settings.model_validate(
                {
                    "api_url": sim.base_url,
                    "api_key": API_KEY,
                    "job_ids": (FINISHED, FAILED, MISSING),
                    "webhook_keys_file": keys.path,
                }
            ),
            state=StateStore.open(tmp_path / "state.sqlite"),
            keys=KeysSource(keys.path),
        )
        try:
            text = httpx.get(running.url + "/metrics", timeout=30).text
        finally:
            running.stop()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))


def test_every_metric_is_documented_in_readme_and_metrics_doc(tmp_path: Path) -> None:
    names = live_metric_names(tmp_path)
    assert {"cerby_up", "cerby_job_status", "process_resident_memory_bytes"} <= names
    for name in names:
        assert f"`{name}`" in METRICS_DOC, name
        if name.startswith("cerby_"):
            assert name in README, name
    assert "`process_*`" in README
    documented = set(re.findall(r"^\| `(cerby_[a-z_]+)`", METRICS_DOC, re.MULTILINE))
    assert documented <= names


def test_metrics_doc_example_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is installed by `make tools`"
    example = METRICS_DOC.split("## Example", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    assert "cerby_job_status{" in example
    result = subprocess.run(
        [promtool, "check", "metrics"], input=example.encode(), capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr
