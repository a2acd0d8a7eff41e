"""The Grafana dashboards: current with their generator, importable with no plugin into any
Grafana with any Prometheus data source, and showing what the issue asks for. (That every query
runs, and the overview's return data, is proven against a real Prometheus in
test_e2e_prometheus.py.)"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    DASHBOARD_FILES,
    GENERATOR,
    dashboard_queries,
    load_dashboard,
    metric_names,
    panels,
    range_selectors,
    recorded_names,
    variable_queries,
    variables_used,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CORE_PANELS = {"row", "stat", "timeseries", "table", "bargauge", "gauge", "state-timeline", "text"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
UIDS = {
    "cerby-jobs-overview.json": "cerby-jobs-overview",
    "cerby-exporter-health.json": "cerby-exporter-health",
}
BOARDS = {path.name: load_dashboard(path) for path in DASHBOARD_FILES}


def generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_dashboards", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, value) of a JSON document."""
    found = [(path, node)]
    if isinstance(node, dict):
        for key, value in node.items():
            found += walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += walk(value, f"{path}[{index}]")
    return found


def by_title(board: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = (item for item in panels(board) if item["title"] == title)
    return found


def test_json_files_are_what_the_generator_writes() -> None:
    module = generator()
    builds: dict[str, Callable[[], object]] = module.DASHBOARDS
    assert set(builds) == set(BOARDS) == set(UIDS)
    for name, build in builds.items():
        path: Path = GENERATOR.parent / name
        assert path.read_text(encoding="utf-8") == module.render(build), (
            f"{name} is not current: run python dashboards/generate_dashboards.py"
        )
    assert module.main(["--check"]) == 0


@pytest.mark.parametrize("name", sorted(UIDS))
def test_dashboard_identity_and_schema(name: str) -> None:
    board = BOARDS[name]
    assert board["uid"] == UIDS[name]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    assert board["title"].startswith("Cerby")
    assert 36 <= board["schemaVersion"] <= 41
    assert "__inputs" not in board
    assert "__requires" not in board
    assert "id" not in board, "a dashboard id is per Grafana instance; the uid is the identity"
    assert "cerby-exporter" in board["tags"]


@pytest.mark.parametrize("name", sorted(UIDS))
def test_datasource_is_a_variable_everywhere(name: str) -> None:
    board = BOARDS[name]
    variables = board["templating"]["list"]
    datasource = variables[0]
    assert datasource["name"] == "datasource"
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    assert datasource.get("current", {}) == {}, "no data source of the author's Grafana is saved"
    for item in panels(board):
        if item["type"] == "row":
            assert "targets" not in item
            continue
        assert item["datasource"] == DATASOURCE, item["title"]
        assert item["targets"], item["title"]
        for query in item["targets"]:
            assert query["datasource"] == DATASOURCE, item["title"]
    for variable in variables[1:]:
        assert variable["datasource"] == DATASOURCE
    # No data source uid anywhere but the variable (and Grafana's built-in annotations).
    uids = {value for path, value in walk(board) if path.endswith(".uid")} - {board["uid"]}
    assert uids == {"${datasource}", "-- Grafana --"}


@pytest.mark.parametrize("name", sorted(UIDS))
def test_panels_are_core_uniquely_numbered_and_laid_out(name: str) -> None:
    board = BOARDS[name]
    items = list(panels(board))
    assert {item["type"] for item in items} <= CORE_PANELS
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for item in items:
        grid = item["gridPos"]
        assert 0 <= grid["x"] <= grid["x"] + grid["w"] <= 24, item["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{item['title']} overlaps another panel"
        cells |= area
        if item["type"] != "row":
            assert item["description"], item["title"]
            refs = [query["refId"] for query in item["targets"]]
            assert len(refs) == len(set(refs))


def test_every_range_is_the_rate_interval() -> None:
    queries = dashboard_queries()
    assert len(queries) > 30
    calls_seen = 0
    for query in queries:
        for selector in range_selectors(query.expr):
            assert selector == "$__rate_interval", (query.panel, query.expr)
        calls = re.findall(r"\b(rate|irate|increase|\w+_over_time)\s*\(", query.expr)
        assert "irate" not in calls, "irate hides what happened between two scrapes"
        # One range per range function: every rate() has its own $__rate_interval.
        assert len(calls) == query.expr.count("[$__rate_interval]"), query.expr
        calls_seen += len(calls)
    assert calls_seen >= 10


def test_variables_used_are_defined() -> None:
    for name, board in BOARDS.items():
        defined = {variable["name"] for variable in board["templating"]["list"]}
        for item in panels(board):
            for query in item.get("targets", []):
                assert variables_used(query["expr"]) <= defined | GRAFANA_BUILTINS, name
        for variable in board["templating"]["list"][1:]:
            assert variables_used(variable["query"]) <= defined, variable["name"]
            assert variable["includeAll"]
            assert variable["allValue"] == ".*"


def test_overview_filters_every_job_query_by_provider_and_workflow_type() -> None:
    board = BOARDS["cerby-jobs-overview.json"]
    names = [variable["name"] for variable in board["templating"]["list"]]
    assert names == ["datasource", "job", "provider", "workflow_type"]
    for item in panels(board):
        for query in item.get("targets", []):
            if re.search(r"cerby_jobs\b|cerby:job_", query["expr"]):
                assert 'provider=~"$provider"' in query["expr"], item["title"]
                assert 'workflow_type=~"$workflow_type"' in query["expr"], item["title"]
                assert 'job=~"$job"' in query["expr"], item["title"]


def test_overview_shows_what_people_on_call_need() -> None:
    board = BOARDS["cerby-jobs-overview.json"]
    titles = {item["title"]: item for item in panels(board)}
    assert titles["Failed jobs"]["type"] in ("stat", "table")
    assert {"Stuck jobs", "Failed access removals", "Jobs by status"} <= set(titles)
    ratio = by_title(board, "Success ratio by workflow type and provider")
    assert "cerby:job_success:ratio" in ratio["targets"][0]["expr"]
    assert ratio["targets"][0]["legendFormat"] == "{{workflow_type}} / {{provider}}"
    assert "status" in by_title(board, "Jobs by status")["targets"][0]["expr"]
    failed = [item for item in panels(board) if item["title"] == "Failed jobs"]
    (table,) = (item for item in failed if item["type"] == "table")
    assert table["targets"][0]["format"] == "table"
    assert table["targets"][0]["instant"]
    columns = table["transformations"][0]["options"]["renameByName"]
    assert {
        "job_id": "Job ID",
        "workflow_type": "Workflow type",
        "provider": "Provider",
        "error_type": "Error type",
        "can_retry": "Can retry",
        "Value": "Last update",
    }.items() <= columns.items()
    assert table["fieldConfig"]["defaults"]["unit"] == "dateTimeAsIso"
    # "Stuck" is the alert's own threshold, not a number of the dashboard's.
    for item in panels(board):
        if item["title"] == "Stuck jobs":
            assert "cerby:threshold:job_stuck_seconds" in item["targets"][0]["expr"]


def test_health_dashboard_shows_the_exporters_health() -> None:
    board = BOARDS["cerby-exporter-health.json"]
    exprs = {
        item["title"]: " ".join(query["expr"] for query in item["targets"])
        for item in panels(board)
        if item["type"] != "row"
    }
    assert "cerby_api_request_duration_seconds_bucket" in exprs["API latency"]
    assert "by (code)" in exprs["API responses by status code"]
    assert 'code="429"' in exprs["Rate limiting"]
    assert "cerby_api_backoff_until_timestamp_seconds" in exprs["Rate limiting"]
    assert 'result="hit"' in exprs["Cache hit ratio"]
    assert "cerby_scrape_duration_seconds" in exprs["Scrape duration"]
    assert "cerby_tracked_jobs" in exprs["Tracked jobs"]
    assert "cerby_stale_jobs" in exprs["Stale jobs"]
    assert "cerby:threshold:api_error_ratio" in exprs["API error ratio"]
    names = [variable["name"] for variable in board["templating"]["list"]]
    assert names == ["datasource", "job", "instance"]


def test_health_dashboard_shows_the_webhook_receiver() -> None:
    board = BOARDS["cerby-exporter-health.json"]
    exprs = {
        item["title"]: " ".join(query["expr"] for query in item["targets"])
        for item in panels(board)
        if item["type"] != "row"
    }
    deliveries = exprs["Webhook deliveries by result"]
    assert "sum by (result) (rate(cerby_webhook_requests_total{" in deliveries
    silence = exprs["Time since the last verified delivery"]
    assert "cerby_webhook_last_event_timestamp_seconds" in silence
    assert "cerby:threshold:webhook_silence_seconds" in silence  # the alert's own threshold
    assert "sum by (source) (cerby_tracked_jobs{" in exprs["Tracked jobs by source"]
    lost = exprs["Forgotten and dropped jobs"]
    assert "sum by (reason) (increase(cerby_jobs_forgotten_total{" in lost
    assert "cerby_jobs_dropped_total" in lost


def test_overview_shows_automation_events_by_application_and_error_code() -> None:
    board = BOARDS["cerby-jobs-overview.json"]
    events = by_title(board, "Automation events by type and application")["targets"][0]
    assert events["expr"].startswith("sum by (event_type, application) (increase(")
    failures = by_title(board, "Automation failures by application and error code")["targets"][0]
    assert failures["expr"].startswith("sum by (application, error_code) (increase(")
    assert 'error_code!=""' in failures["expr"]  # success events carry an empty error_code
    assert failures["legendFormat"] == "{{application}}: {{error_code}}"


def test_tracked_jobs_are_summed_over_their_source() -> None:
    """cerby_tracked_jobs has a `source` label: a query shows it, or sums it away."""
    seen = 0
    for query in dashboard_queries():
        for match in re.finditer(r"cerby_tracked_jobs\b", query.expr):
            before = query.expr[: match.start()]
            assert re.search(r"sum(?: by \(source\)| without \(source\))? ?\($", before), query
            seen += 1
    assert seen >= 3


def test_recording_rules_used_by_dashboards_exist() -> None:
    recorded = recorded_names()
    used: set[str] = set()
    for query in dashboard_queries():
        used |= {name for name in metric_names(query.expr) if ":" in name}
    assert used, "the overview is built on the recording rules"
    assert used <= recorded, used - recorded
    for _, _, variable_query in variable_queries():
        assert "cerby_" in variable_query
