"""Writes the Grafana dashboards of cerby-exporter: dashboards/*.json.

    python dashboards/generate_dashboards.py          # rewrite the JSON files
    python dashboards/generate_dashboards.py --check  # exit 1 if they are not current

The JSON files are committed; edit this script, not them, and run it. Standard library only.
Every panel uses the `datasource` template variable, every rate its `$__rate_interval`, and only
core panel types, so the dashboards import into Grafana 10 or later with no plugin.

The overview uses the recording rules of dashboards/alerts/cerby-exporter.rules.yml (names with a
colon): its "failed" and "stuck" are exactly what the alerts call failed and stuck.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["cerby", "cerby-exporter"]

Json = dict[str, Any]

# Label filters shared by the queries of each dashboard.
JOB_FILTER = 'job=~"$job", provider=~"$provider", workflow_type=~"$workflow_type"'
TARGET_FILTER = 'job=~"$job", instance=~"$instance"'
IN_FLIGHT = 'status=~"created|started|running|retrying"'

WEBHOOK_RESULT_COLORS = {
    "accepted": "green",
    "duplicate": "blue",
    "ignored": "text",
    "bad_signature": "red",
    "stale_timestamp": "orange",
    "unknown_key": "purple",
    "malformed": "dark-red",
    "too_large": "dark-orange",
    "unavailable": "yellow",
}

STATUS_COLORS = {
    "created": "blue",
    "started": "purple",
    "running": "yellow",
    "retrying": "orange",
    "finished": "green",
    "error": "red",
    "unknown": "text",
}


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> Json:
    """A Prometheus query; refIds are filled in by `panel`."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "instant": instant or table,
        "range": not (instant or table),
        "format": "table" if table else "time_series",
    }


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"value": value, "color": color} for value, color in steps],
    }


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str = "short",
    steps: Json | None = None,
    mappings: list[Json] | None = None,
    options: Json | None = None,
    custom: Json | None = None,
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    width: int = 6,
    height: int = 8,
) -> Json:
    defaults: Json = {
        "unit": unit,
        "color": {"mode": "thresholds" if kind in ("stat", "bargauge") else "palette-classic"},
        "thresholds": steps or thresholds((None, "green")),
        "mappings": mappings or [],
    }
    if custom is not None:
        defaults["custom"] = custom
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    for ref, query in zip("ABCDEFGH", targets, strict=False):
        query["refId"] = ref
    result: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options or {},
        "gridPos": {"w": width, "h": height},
    }
    if transformations:
        result["transformations"] = transformations
    return result


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    steps: Json | None = None,
    mappings: list[Json] | None = None,
    legend: str = "",
    text_mode: str = "value",
    width: int = 4,
) -> Json:
    return panel(
        "stat",
        title,
        description,
        [target(expr, legend, instant=True)],
        unit=unit,
        steps=steps,
        mappings=mappings,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "center",
            "orientation": "auto",
            "textMode": text_mode,
        },
        width=width,
        height=4,
    )


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str = "short",
    stacked: bool = False,
    overrides: list[Json] | None = None,
    minimum: float | None = 0,
    maximum: float | None = None,
    width: int = 12,
    height: int = 8,
) -> Json:
    return panel(
        "timeseries",
        title,
        description,
        targets,
        unit=unit,
        custom={
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 30 if stacked else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stacked else "none", "group": "A"},
        },
        options={
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        overrides=overrides,
        minimum=minimum,
        maximum=maximum,
        width=width,
        height=height,
    )


def table(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str,
    columns: dict[str, str],
    hidden: tuple[str, ...] = ("Time", "__name__", "job", "instance"),
    sort_by: str | None = None,
    width: int = 24,
    height: int = 8,
) -> Json:
    """An instant query as a table; `columns` maps labels (and "Value") to column titles."""
    order = {name: index for index, name in enumerate(columns)}
    return panel(
        "table",
        title,
        description,
        [target(expr, table=True)],
        unit=unit,
        options={
            "showHeader": True,
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
            "sortBy": [{"displayName": sort_by, "desc": True}] if sort_by else [],
        },
        custom={"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True},
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": dict.fromkeys(hidden, True),
                    "indexByName": order,
                    "renameByName": columns,
                },
            }
        ],
        width=width,
        height=height,
    )


def row(title: str) -> Json:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24}}


def by_name(name: str, **properties: Any) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def status_colors() -> list[Json]:
    return [
        by_name(status, color={"mode": "fixed", "fixedColor": color})
        for status, color in STATUS_COLORS.items()
    ]


def up_mapping(up: str, down: str) -> list[Json]:
    return [
        {
            "type": "value",
            "options": {
                "1": {"text": up, "color": "green", "index": 0},
                "0": {"text": down, "color": "red", "index": 1},
            },
        }
    ]


def query_variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "regex": "",
        "hide": 0,
        "options": [],
    }


def datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def layout(panels: list[Json]) -> list[Json]:
    """Number the panels and place them left to right, top to bottom, on Grafana's 24 columns."""
    x = y = line_height = 0
    for number, item in enumerate(panels, start=1):
        item["id"] = number
        grid = item["gridPos"]
        if item["type"] == "row":
            y, x, line_height = y + line_height, 0, 0
            grid.update(x=0, y=y, h=1)
            y += 1
            continue
        if x + grid["w"] > 24:
            y, x, line_height = y + line_height, 0, 0
        grid.update(x=x, y=y)
        x += grid["w"]
        line_height = max(line_height, grid["h"])
    return panels


def dashboard(
    uid: str, title: str, description: str, variables: list[Json], panels: list[Json]
) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "title": "Cerby dashboards",
                "type": "dashboards",
                "tags": ["cerby-exporter"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout(panels),
    }


def overview() -> Json:
    f = JOB_FILTER
    failed_columns = {
        "job_id": "Job ID",
        "workflow_type": "Workflow type",
        "provider": "Provider",
        "error_type": "Error type",
        "can_retry": "Can retry",
        "user_required": "Needs a person",
        "access_removal": "Removes access",
        "trigger": "Trigger",
        "account_name": "Account",
        "account_id": "Account ID",
        "Value": "Last update",
    }
    stuck_columns = {
        "job_id": "Job ID",
        "workflow_type": "Workflow type",
        "provider": "Provider",
        "status": "Status",
        "access_removal": "Removes access",
        "trigger": "Trigger",
        "account_name": "Account",
        "account_id": "Account ID",
        "Value": "Without update for",
    }
    panels = [
        row("Now"),
        stat(
            "Failed jobs",
            "Tracked jobs in status error now (alerts CerbyJobFailed*, "
            "CerbyAccessRemovalJobFailed).",
            f"count(cerby:job_failed:info{{{f}}}) or vector(0)",
            steps=thresholds((None, "green"), (1, "red")),
        ),
        stat(
            "Failed access removals",
            "Failed jobs that remove access (revoke workflows or trigger user_deprovisioned): "
            "a departed person may keep access to an account.",
            f'count(cerby:job_failed:info{{{f}, access_removal="true"}}) or vector(0)',
            steps=thresholds((None, "green"), (1, "dark-red")),
        ),
        stat(
            "Stuck jobs",
            "Jobs in created/started/running/retrying whose last update is older than the "
            "threshold the alerts use (cerby:threshold:job_stuck_seconds).",
            f"count(cerby:job_in_progress:age_seconds{{{f}}} "
            "> on () group_left () cerby:threshold:job_stuck_seconds) or vector(0)",
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Jobs in flight",
            "Tracked jobs not yet finished or failed.",
            f"sum(cerby_jobs{{{f}, {IN_FLIGHT}}}) or vector(0)",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Success ratio",
            "Finished jobs among the tracked jobs that have ended (finished or error).",
            f'sum(cerby_jobs{{{f}, status="finished"}}) '
            f'/ sum(cerby_jobs{{{f}, status=~"finished|error"}})',
            unit="percentunit",
            steps=thresholds((None, "red"), (0.9, "orange"), (0.99, "green")),
        ),
        stat(
            "Cerby API",
            "Whether the exporter's latest round of requests reached Cerby with a valid key.",
            'min(cerby_up{job=~"$job"})',
            mappings=up_mapping("Reachable", "Unreachable"),
            steps=thresholds((None, "red"), (1, "green")),
        ),
        row("Failed and stuck jobs"),
        table(
            "Failed jobs",
            "Every tracked job in status error, most recently updated first. Cerby keeps no "
            "start or end time: last update is the job's updatedAt.",
            f"cerby:job_failed:info{{{f}}}\n"
            "  * on (job, instance, job_id) group_left ()\n"
            "(\n"
            "    1000 * cerby_job_updated_timestamp_seconds\n"
            "  or on (job, instance, job_id)\n"
            "    NaN * cerby:job_failed:info\n"
            ")",
            unit="dateTimeAsIso",
            columns=failed_columns,
            sort_by="Last update",
        ),
        table(
            "Stuck jobs",
            "Jobs in flight without an update for longer than cerby:threshold:job_stuck_seconds.",
            f"cerby:job_in_progress:age_seconds{{{f}}}\n"
            "  > on () group_left ()\n"
            "cerby:threshold:job_stuck_seconds",
            unit="s",
            columns=stuck_columns,
            sort_by="Without update for",
            height=6,
        ),
        row("Trends"),
        panel(
            "bargauge",
            "Success ratio by workflow type and provider",
            "Finished jobs among the tracked jobs that have ended, per workflow type and "
            "provider (recording rule cerby:job_success:ratio).",
            [
                target(
                    f"avg by (workflow_type, provider) (cerby:job_success:ratio{{{f}}})",
                    "{{workflow_type}} / {{provider}}",
                    instant=True,
                )
            ],
            unit="percentunit",
            minimum=0,
            maximum=1,
            steps=thresholds((None, "red"), (0.9, "orange"), (0.99, "green")),
            options={
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "orientation": "horizontal",
                "displayMode": "gradient",
                "showUnfilled": True,
                "valueMode": "color",
                "namePlacement": "auto",
                "sizing": "auto",
                "minVizHeight": 16,
                "minVizWidth": 8,
                "maxVizHeight": 300,
            },
            width=12,
            height=10,
        ),
        timeseries(
            "Jobs by status",
            "Tracked jobs in each status over time.",
            [target(f"sum by (status) (cerby_jobs{{{f}}})", "{{status}}")],
            stacked=True,
            overrides=status_colors(),
            height=10,
        ),
        timeseries(
            "Failed jobs by workflow type and provider",
            "Tracked jobs in status error over time.",
            [
                target(
                    f'sum by (workflow_type, provider) (cerby_jobs{{{f}, status="error"}})',
                    "{{workflow_type}} / {{provider}}",
                )
            ],
            stacked=True,
        ),
        timeseries(
            "Jobs in flight by workflow type",
            "Tracked jobs not yet finished or failed, by workflow type.",
            [
                target(
                    f"sum by (workflow_type) (cerby_jobs{{{f}, {IN_FLIGHT}}})",
                    "{{workflow_type}}",
                )
            ],
            stacked=True,
        ),
        row("Automation events (webhooks)"),
        timeseries(
            "Automation events by type and application",
            "Events Cerby's webhooks reported, each counted once however often it was "
            "delivered, by event type and application. Only exporters with a webhook receiver "
            "have them; the provider and workflow type filters do not apply.",
            [
                target(
                    "sum by (event_type, application) "
                    '(increase(cerby_automation_events_total{job=~"$job"}[$__rate_interval]))',
                    "{{event_type}} / {{application}}",
                )
            ],
            stacked=True,
        ),
        timeseries(
            "Automation failures by application and error code",
            "Failure events (those with an error code) from Cerby's webhooks, by application "
            "and Cerby's error code, e.g. BadCredentials or NotEnoughSeats.",
            [
                target(
                    "sum by (application, error_code) (increase(cerby_automation_events_total"
                    '{job=~"$job", error_code!=""}[$__rate_interval]))',
                    "{{application}}: {{error_code}}",
                )
            ],
            stacked=True,
        ),
        table(
            "Firing Cerby alerts",
            "Alerts of cerby-exporter.rules.yml firing now.",
            'ALERTS{alertname=~"Cerby.+", alertstate="firing", job=~"$job"}',
            unit="short",
            columns={
                "alertname": "Alert",
                "severity": "Severity",
                "job_id": "Job ID",
                "workflow_type": "Workflow type",
                "provider": "Provider",
                "instance": "Exporter",
            },
            hidden=("Time", "__name__", "alertstate", "Value", "job"),
            height=6,
        ),
    ]
    return dashboard(
        "cerby-jobs-overview",
        "Cerby automation jobs",
        "Failed and stuck Cerby automation jobs, for the people on call. Needs the recording "
        "rules of cerby-exporter.rules.yml.",
        [
            query_variable("job", "Exporter job", "label_values(cerby_up, job)"),
            query_variable(
                "provider", "Provider", 'label_values(cerby_jobs{job=~"$job"}, provider)'
            ),
            query_variable(
                "workflow_type",
                "Workflow type",
                'label_values(cerby_jobs{job=~"$job"}, workflow_type)',
            ),
        ],
        panels,
    )


def exporter_health() -> Json:
    g = TARGET_FILTER
    requests = f"rate(cerby_api_request_duration_seconds_count{{{g}}}[$__rate_interval])"
    panels = [
        row("Status"),
        stat(
            "Cerby API",
            "Whether the latest round of requests reached Cerby with a valid key (cerby_up).",
            f"min(cerby_up{{{g}}})",
            mappings=up_mapping("Reachable", "Unreachable"),
            steps=thresholds((None, "red"), (1, "green")),
        ),
        stat(
            "Exporter",
            "Whether Prometheus can scrape every selected exporter (up).",
            f"min(up{{{g}}})",
            mappings=up_mapping("Up", "Down"),
            steps=thresholds((None, "red"), (1, "green")),
        ),
        stat(
            "Tracked jobs",
            "Job IDs collected: configured ones and those learned from webhooks.",
            f"sum(cerby_tracked_jobs{{{g}}})",
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Stale jobs",
            "Tracked jobs whose data is too old to show: refreshes have failed for longer than "
            "--max-staleness past due.",
            f"sum(cerby_stale_jobs{{{g}}})",
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Jobs failing to fetch",
            "Tracked jobs whose latest fetch failed (cerby_job_fetch_success 0), including IDs "
            "Cerby does not know.",
            f"count(cerby_job_fetch_success{{{g}}} == 0) or vector(0)",
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Rate-limit back-off left",
            "Time until the exporter sends requests again after a 429.",
            f"clamp_min(max(cerby_api_backoff_until_timestamp_seconds{{{g}}}) - time(), 0)",
            unit="s",
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        row("Cerby API"),
        timeseries(
            "API responses by status code",
            "Answers from the Cerby API per second, by HTTP status code.",
            [
                target(
                    f"sum by (code) (rate(cerby_api_requests_total{{{g}}}[$__rate_interval]))",
                    "{{code}}",
                )
            ],
            unit="reqps",
            stacked=True,
        ),
        timeseries(
            "Failed fetches by reason",
            "Job fetches that failed per second, by reason (timeouts and connection errors "
            "get no status code, so they show here only).",
            [
                target(
                    "sum by (reason) "
                    f"(rate(cerby_job_fetch_errors_total{{{g}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
            unit="ops",
            stacked=True,
        ),
        timeseries(
            "API error ratio",
            "Share of requests that failed (no answer, 5xx or an unexpected code; 401/403, 404 "
            "and 429 have alerts of their own), against the alert's threshold.",
            [
                target(
                    f"(\n  sum({requests})\n  -\n"
                    f'  sum(rate(cerby_api_requests_total{{{g}, code=~"2..|401|403|404|429"}}'
                    f"[$__rate_interval]) or 0 * {requests})\n)\n/\nsum({requests})",
                    "error ratio",
                ),
                target("cerby:threshold:api_error_ratio", "alert threshold"),
            ],
            unit="percentunit",
            maximum=1,
            overrides=[
                by_name(
                    "alert threshold",
                    color={"mode": "fixed", "fixedColor": "red"},
                    **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}},
                )
            ],
        ),
        timeseries(
            "API latency",
            "Time to send a request to Cerby and read its whole answer.",
            [
                target(
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(cerby_api_request_duration_seconds_bucket{{{g}}}[$__rate_interval])))",
                    f"p{round(q * 100)}",
                )
                for q in (0.5, 0.9, 0.99)
            ]
            + [
                target(
                    f"sum(rate(cerby_api_request_duration_seconds_sum{{{g}}}[$__rate_interval]))"
                    f"\n/\nsum({requests})",
                    "mean",
                )
            ],
            unit="s",
        ),
        timeseries(
            "Rate limiting",
            "429 answers per second, and the time left in the exporter's back-off (right axis).",
            [
                target(
                    f'sum(rate(cerby_api_requests_total{{{g}, code="429"}}[$__rate_interval]))'
                    f" or vector(0)",
                    "429 answers",
                ),
                target(
                    f"clamp_min(max(cerby_api_backoff_until_timestamp_seconds{{{g}}}) - time(), 0)",
                    "back-off left",
                ),
            ],
            unit="reqps",
            overrides=[by_name("back-off left", unit="s", **{"custom.axisPlacement": "right"})],
            width=24,
        ),
        row("Exporter"),
        timeseries(
            "Cache hit ratio",
            "Share of job lookups answered from fresh cached data.",
            [
                target(
                    f'sum(rate(cerby_cache_requests_total{{{g}, result="hit"}}[$__rate_interval]))'
                    f"\n/\nsum(rate(cerby_cache_requests_total{{{g}}}[$__rate_interval]))",
                    "hit ratio",
                )
            ],
            unit="percentunit",
            maximum=1,
            width=8,
        ),
        timeseries(
            "Scrape duration",
            "Seconds each scrape spent refreshing job data (cerby_scrape_duration_seconds) and "
            "the whole scrape as Prometheus saw it.",
            [
                target(f"max by (instance) (cerby_scrape_duration_seconds{{{g}}})", "{{instance}}"),
                target(
                    f"max by (instance) (scrape_duration_seconds{{{g}}})",
                    "{{instance}} (Prometheus)",
                ),
            ],
            unit="s",
            width=8,
        ),
        timeseries(
            "Tracked and stale jobs",
            "Tracked job IDs (configured and learned), those whose data is too old to show, "
            "and those whose latest fetch failed.",
            [
                target(f"sum(cerby_tracked_jobs{{{g}}})", "tracked"),
                target(f"sum(cerby_stale_jobs{{{g}}})", "stale"),
                target(
                    f"count(cerby_job_fetch_success{{{g}}} == 0) or vector(0)", "failing to fetch"
                ),
            ],
            width=8,
        ),
        table(
            "Exporters",
            "Version of each selected exporter.",
            f"cerby_exporter_build_info{{{g}}}",
            unit="short",
            columns={"job": "Job", "instance": "Instance", "version": "Version"},
            hidden=("Time", "__name__", "Value"),
            height=5,
        ),
        row("Webhooks"),
        timeseries(
            "Webhook deliveries by result",
            "Deliveries to the webhook receiver per second, by result: accepted, duplicate "
            "(a retry of a stored event) and ignored (no job in it) are answered 2xx; "
            "bad_signature, stale_timestamp and malformed are refused for good; unknown_key "
            "and unavailable are answered 503 for Cerby to retry; too_large is refused.",
            [
                target(
                    "sum by (result) "
                    f"(rate(cerby_webhook_requests_total{{{g}}}[$__rate_interval]))",
                    "{{result}}",
                )
            ],
            unit="reqps",
            stacked=True,
            overrides=[
                by_name(name, color={"mode": "fixed", "fixedColor": color})
                for name, color in WEBHOOK_RESULT_COLORS.items()
            ],
        ),
        timeseries(
            "Time since the last verified delivery",
            "Seconds since the webhook receiver last verified a delivery (kept across restarts "
            "in the state file), against the threshold of the alert CerbyWebhooksSilent. "
            "Empty for a receiver that never verified one.",
            [
                target(
                    "time() - max by (instance) "
                    f"(cerby_webhook_last_event_timestamp_seconds{{{g}}} > 0)",
                    "{{instance}}",
                ),
                target("cerby:threshold:webhook_silence_seconds", "alert threshold"),
            ],
            unit="s",
            overrides=[
                by_name(
                    "alert threshold",
                    color={"mode": "fixed", "fixedColor": "red"},
                    **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}},
                )
            ],
        ),
        timeseries(
            "Tracked jobs by source",
            "Job IDs collected, by where they came from: configured (flags, job-ID file) or "
            "learned from webhooks.",
            [target(f"sum by (source) (cerby_tracked_jobs{{{g}}})", "{{source}}")],
            stacked=True,
        ),
        timeseries(
            "Forgotten and dropped jobs",
            "Learned jobs no longer tracked: forgotten after --job-retention in a terminal "
            "state, or to make room under --max-jobs; and jobs not tracked at all because "
            "--max-jobs was reached with every learned job in flight (alert CerbyJobsDropped).",
            [
                target(
                    "sum by (reason) "
                    f"(increase(cerby_jobs_forgotten_total{{{g}}}[$__rate_interval]))",
                    "forgotten ({{reason}})",
                ),
                target(
                    f"sum(increase(cerby_jobs_dropped_total{{{g}}}[$__rate_interval]))",
                    "dropped at the cap",
                ),
            ],
            overrides=[by_name("dropped at the cap", color={"mode": "fixed", "fixedColor": "red"})],
        ),
    ]
    return dashboard(
        "cerby-exporter-health",
        "Cerby exporter health",
        "How cerby-exporter talks to the Cerby API (latency, errors, rate limiting, cache) and "
        "what its webhook receiver gets.",
        [
            query_variable("job", "Exporter job", "label_values(cerby_up, job)"),
            query_variable("instance", "Instance", 'label_values(cerby_up{job=~"$job"}, instance)'),
        ],
        panels,
    )


DASHBOARDS = {
    "cerby-jobs-overview.json": overview,
    "cerby-exporter-health.json": exporter_health,
}


def render(build: Callable[[], Json]) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a file is not current")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"not current, run {Path(__file__).name}: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
