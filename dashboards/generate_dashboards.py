"""Writes the Grafana dashboards of cerby-exporter: dashboards/*.json.

    python dashboards/generate_dashboards.py          # rewrite the JSON files
    python dashboards/generate_dashboards.py --check  # exit 1 if they are not current

The JSON files are committed; edit this script, not them, and run it. It builds them with
grafana-foundation-sdk, Grafana's own typed builders (a development dependency: the exporter
never reads this script), so every option is one of Grafana's schema, with the type it has there,
and the SDK places the panels on the grid and writes Grafana's defaults for what is left unset.
Its version is pinned in pyproject.toml because its output is what is committed. Every panel uses
the `datasource` template variable, every rate its `$__rate_interval`, and only core panel types,
so the dashboards import into Grafana 10 or later with no plugin.

The SDK gives no panel an id, and Grafana needs each to have its own (links to a panel, its View
and Edit pages), so `dashboard` numbers them on the built model.

The overview uses the recording rules of dashboards/alerts/cerby-exporter.rules.yml (names with a
colon): its "failed" and "stuck" are exactly what the alerts call failed and stuck.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from grafana_foundation_sdk.builders import common, prometheus
from grafana_foundation_sdk.builders import dashboard as sdk
from grafana_foundation_sdk.builders.bargauge import Panel as BarGauge
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.table import Panel as Table
from grafana_foundation_sdk.builders.timeseries import Panel as TimeSeries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as viz
from grafana_foundation_sdk.models import dashboard as schema
from grafana_foundation_sdk.models.dashboard import FieldColorModeId as Color
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DATASOURCE = schema.DataSourceRef("prometheus", "${datasource}")
TAGS = ["cerby", "cerby-exporter"]

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

# A panel's queries: each series' legend (the name overrides match) and its PromQL.
Targets = Mapping[str, str]
# Field overrides by series name.
Overrides = Mapping[str, list[schema.DynamicConfigValue]]
# What a dashboard lists, top to bottom: rows and the panels under them.
Item = sdk.Row | Builder[schema.Panel]


# The panel builders `panel` takes: they have the same methods, but no base class declares them.
P = TypeVar("P", BarGauge, Stat, Table, TimeSeries)


def steps(*pairs: tuple[float | None, str]) -> sdk.ThresholdsConfig:
    thresholds = [schema.Threshold(value, color) for value, color in pairs]
    return sdk.ThresholdsConfig().mode(schema.ThresholdsMode.ABSOLUTE).steps(thresholds)


def panel(
    builder: P,
    title: str,
    description: str,
    targets: Targets,
    *,
    instant: bool = False,
    table: bool = False,
    unit: str = "short",
    thresholds: sdk.ThresholdsConfig | None = None,
    mappings: list[schema.ValueMapping] | None = None,
    width: int,
    height: int,
) -> P:
    color = Color.THRESHOLDS if isinstance(builder, Stat | BarGauge) else Color.PALETTE_CLASSIC
    for index, (legend, expr) in enumerate(targets.items()):
        query = prometheus.Dataquery().ref_id(string.ascii_uppercase[index]).expr(expr)
        query.legend_format(legend).datasource(DATASOURCE)
        query.format(PromQueryFormat.TABLE if table else PromQueryFormat.TIME_SERIES)
        builder.with_target(query.instant() if instant or table else query.range())
    return (
        builder.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .color_scheme(sdk.FieldColor().mode(color))
        .thresholds(thresholds or steps((None, "green")))
        .mappings(mappings or [])
        .span(width)
        .height(height)
    )


def last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    thresholds: sdk.ThresholdsConfig | None = None,
    mappings: list[schema.ValueMapping] | None = None,
) -> Stat:
    return (
        panel(
            Stat(),
            title,
            description,
            {"__auto": expr},
            instant=True,
            unit=unit,
            thresholds=thresholds,
            mappings=mappings,
            width=4,
            height=4,
        )
        .reduce_options(last_value())
        .color_mode(viz.BigValueColorMode.BACKGROUND)
        .graph_mode(viz.BigValueGraphMode.NONE)
        .justify_mode(viz.BigValueJustifyMode.CENTER)
        .text_mode(viz.BigValueTextMode.VALUE)
    )


def timeseries(
    title: str,
    description: str,
    targets: Targets,
    *,
    unit: str = "short",
    stacked: bool = False,
    overrides: Overrides | None = None,
    maximum: float | None = None,
    width: int = 12,
    height: int = 8,
) -> TimeSeries:
    built = (
        panel(TimeSeries(), title, description, targets, unit=unit, width=width, height=height)
        .min(0)
        .fill_opacity(30 if stacked else 10)
        .show_points(viz.VisibilityMode.NEVER)
        .legend(common.VizLegendOptions().show_legend(True))
        .tooltip(
            common.VizTooltipOptions()
            .mode(viz.TooltipDisplayMode.MULTI)
            .sort(viz.SortOrder.DESCENDING)
        )
    )
    if stacked:
        built.stacking(common.StackingConfig().mode(viz.StackingMode.NORMAL).group("A"))
    if maximum is not None:
        built.max(maximum)
    for name, properties in (overrides or {}).items():
        built.override_by_name(name, properties)
    return built


def table(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str,
    columns: dict[str, str],
    hidden: tuple[str, ...] = ("Time", "__name__", "job", "instance"),
    sort_by: str | None = None,
    height: int = 8,
) -> Table:
    """An instant query as a table; `columns` maps labels (and "Value") to column titles."""
    organize = {
        "excludeByName": dict.fromkeys(hidden, True),
        "indexByName": {name: index for index, name in enumerate(columns)},
        "renameByName": columns,
    }
    sorting: list[Builder[viz.TableSortByFieldState]] = []
    if sort_by:
        sorting.append(common.TableSortByFieldState().display_name(sort_by).desc(True))
    return (
        panel(
            Table(),
            title,
            description,
            {"__auto": expr},
            table=True,
            unit=unit,
            width=24,
            height=height,
        )
        .sort_by(sorting)
        .filterable(True)
        .with_transformation(schema.DataTransformerConfig("organize", options=organize))
    )


def fixed(color: str) -> schema.DynamicConfigValue:
    return schema.DynamicConfigValue("color", schema.FieldColor(Color.FIXED, color))


def alert_threshold() -> Overrides:
    """The alert's threshold, as a red dashed line."""
    dashed = viz.LineStyle(fill="dash", dash=[10, 10])
    return {
        "alert threshold": [fixed("red"), schema.DynamicConfigValue("custom.lineStyle", dashed)]
    }


def up_mapping(up: str, down: str) -> list[schema.ValueMapping]:
    result = schema.ValueMappingResult
    return [schema.ValueMap({"1": result(up, "green", index=0), "0": result(down, "red", index=1)})]


def query_variable(name: str, label: str, expr: str) -> sdk.QueryVariable:
    return (
        sdk.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(expr)
        .refresh(schema.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .include_all(True)
        .all_value(".*")
        .multi(True)
        .current(schema.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .sort(schema.VariableSort.ALPHABETICAL_ASC)
    )


def dashboard(
    uid: str, title: str, description: str, variables: list[sdk.QueryVariable], items: list[Item]
) -> schema.Dashboard:
    board = (
        sdk.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(schema.DashboardCursorSync.CROSSHAIR)
        .refresh("1m")
        .time("now-24h", "now")
        .timezone("browser")
        .annotation(
            sdk.AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(schema.DataSourceRef("grafana", "-- Grafana --"))
            .built_in(1)
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
        )
        .link(
            sdk.DashboardLink("Cerby dashboards")
            .type(schema.DashboardLinkType.DASHBOARDS)
            .tags(["cerby-exporter"])
            .include_vars(True)
            .keep_time(True)
            .icon("external link")
        )
        .with_variable(sdk.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for variable in variables:
        board.with_variable(variable)
    for item in items:
        if isinstance(item, sdk.Row):
            board.with_row(item)
        else:
            board.with_panel(item)
    built = board.build()
    for number, placed in enumerate(built.panels or [], start=1):
        placed.id_val = number
    return built


def overview() -> schema.Dashboard:
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
    ratio = steps((None, "red"), (0.9, "orange"), (0.99, "green"))
    items: list[Item] = [
        sdk.Row("Now"),
        stat(
            "Failed jobs",
            "Tracked jobs in status error now (alerts CerbyJobFailed*, "
            "CerbyAccessRemovalJobFailed).",
            f"count(cerby:job_failed:info{{{f}}}) or vector(0)",
            thresholds=steps((None, "green"), (1, "red")),
        ),
        stat(
            "Failed access removals",
            "Failed jobs that remove access (revoke workflows or trigger user_deprovisioned): "
            "a departed person may keep access to an account.",
            f'count(cerby:job_failed:info{{{f}, access_removal="true"}}) or vector(0)',
            thresholds=steps((None, "green"), (1, "dark-red")),
        ),
        stat(
            "Stuck jobs",
            "Jobs in created/started/running/retrying whose last update is older than the "
            "threshold the alerts use (cerby:threshold:job_stuck_seconds).",
            f"count(cerby:job_in_progress:age_seconds{{{f}}} "
            "> on () group_left () cerby:threshold:job_stuck_seconds) or vector(0)",
            thresholds=steps((None, "green"), (1, "orange")),
        ),
        stat(
            "Jobs in flight",
            "Tracked jobs not yet finished or failed.",
            f"sum(cerby_jobs{{{f}, {IN_FLIGHT}}}) or vector(0)",
            thresholds=steps((None, "blue")),
        ),
        stat(
            "Success ratio",
            "Finished jobs among the tracked jobs that have ended (finished or error).",
            f'sum(cerby_jobs{{{f}, status="finished"}}) '
            f'/ sum(cerby_jobs{{{f}, status=~"finished|error"}})',
            unit="percentunit",
            thresholds=ratio,
        ),
        stat(
            "Cerby API",
            "Whether the exporter's latest round of requests reached Cerby with a valid key.",
            'min(cerby_up{job=~"$job"})',
            mappings=up_mapping("Reachable", "Unreachable"),
            thresholds=steps((None, "red"), (1, "green")),
        ),
        sdk.Row("Failed and stuck jobs"),
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
        sdk.Row("Trends"),
        panel(
            BarGauge(),
            "Success ratio by workflow type and provider",
            "Finished jobs among the tracked jobs that have ended, per workflow type and "
            "provider (recording rule cerby:job_success:ratio).",
            {
                "{{workflow_type}} / {{provider}}": "avg by (workflow_type, provider) "
                f"(cerby:job_success:ratio{{{f}}})"
            },
            instant=True,
            unit="percentunit",
            thresholds=ratio,
            width=12,
            height=10,
        )
        .min(0)
        .max(1)
        .reduce_options(last_value())
        .orientation(viz.VizOrientation.HORIZONTAL),
        timeseries(
            "Jobs by status",
            "Tracked jobs in each status over time.",
            {"{{status}}": f"sum by (status) (cerby_jobs{{{f}}})"},
            stacked=True,
            overrides={status: [fixed(color)] for status, color in STATUS_COLORS.items()},
            height=10,
        ),
        timeseries(
            "Failed jobs by workflow type and provider",
            "Tracked jobs in status error over time.",
            {
                "{{workflow_type}} / {{provider}}": "sum by (workflow_type, provider) "
                f'(cerby_jobs{{{f}, status="error"}})'
            },
            stacked=True,
        ),
        timeseries(
            "Jobs in flight by workflow type",
            "Tracked jobs not yet finished or failed, by workflow type.",
            {"{{workflow_type}}": f"sum by (workflow_type) (cerby_jobs{{{f}, {IN_FLIGHT}}})"},
            stacked=True,
        ),
        sdk.Row("Automation events (webhooks)"),
        timeseries(
            "Automation events by type and application",
            "Events Cerby's webhooks reported, each counted once however often it was "
            "delivered, by event type and application. Only exporters with a webhook receiver "
            "have them; the provider and workflow type filters do not apply.",
            {
                "{{event_type}} / {{application}}": "sum by (event_type, application) "
                '(increase(cerby_automation_events_total{job=~"$job"}[$__rate_interval]))'
            },
            stacked=True,
        ),
        timeseries(
            "Automation failures by application and error code",
            "Failure events (those with an error code) from Cerby's webhooks, by application "
            "and Cerby's error code, e.g. BadCredentials or NotEnoughSeats.",
            {
                "{{application}}: {{error_code}}": "sum by (application, error_code) "
                "(increase(cerby_automation_events_total"
                '{job=~"$job", error_code!=""}[$__rate_interval]))'
            },
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
        items,
    )


def exporter_health() -> schema.Dashboard:
    g = TARGET_FILTER
    requests = f"rate(cerby_api_request_duration_seconds_count{{{g}}}[$__rate_interval])"
    backoff = f"clamp_min(max(cerby_api_backoff_until_timestamp_seconds{{{g}}}) - time(), 0)"
    failing = f"count(cerby_job_fetch_success{{{g}}} == 0) or vector(0)"
    latency = {
        f"p{round(q * 100)}": f"histogram_quantile({q}, sum by (le) "
        f"(rate(cerby_api_request_duration_seconds_bucket{{{g}}}[$__rate_interval])))"
        for q in (0.5, 0.9, 0.99)
    }
    items: list[Item] = [
        sdk.Row("Status"),
        stat(
            "Cerby API",
            "Whether the latest round of requests reached Cerby with a valid key (cerby_up).",
            f"min(cerby_up{{{g}}})",
            mappings=up_mapping("Reachable", "Unreachable"),
            thresholds=steps((None, "red"), (1, "green")),
        ),
        stat(
            "Exporter",
            "Whether Prometheus can scrape every selected exporter (up).",
            f"min(up{{{g}}})",
            mappings=up_mapping("Up", "Down"),
            thresholds=steps((None, "red"), (1, "green")),
        ),
        stat(
            "Tracked jobs",
            "Job IDs collected: configured ones and those learned from webhooks.",
            f"sum(cerby_tracked_jobs{{{g}}})",
            thresholds=steps((None, "blue")),
        ),
        stat(
            "Stale jobs",
            "Tracked jobs whose data is too old to show: refreshes have failed for longer than "
            "--max-staleness past due.",
            f"sum(cerby_stale_jobs{{{g}}})",
            thresholds=steps((None, "green"), (1, "orange")),
        ),
        stat(
            "Jobs failing to fetch",
            "Tracked jobs whose latest fetch failed (cerby_job_fetch_success 0), including IDs "
            "Cerby does not know.",
            failing,
            thresholds=steps((None, "green"), (1, "orange")),
        ),
        stat(
            "Rate-limit back-off left",
            "Time until the exporter sends requests again after a 429.",
            backoff,
            unit="s",
            thresholds=steps((None, "green"), (1, "orange")),
        ),
        sdk.Row("Cerby API"),
        timeseries(
            "API responses by status code",
            "Answers from the Cerby API per second, by HTTP status code.",
            {
                "{{code}}": "sum by (code) "
                f"(rate(cerby_api_requests_total{{{g}}}[$__rate_interval]))"
            },
            unit="reqps",
            stacked=True,
        ),
        timeseries(
            "Failed fetches by reason",
            "Job fetches that failed per second, by reason (timeouts and connection errors "
            "get no status code, so they show here only).",
            {
                "{{reason}}": "sum by (reason) "
                f"(rate(cerby_job_fetch_errors_total{{{g}}}[$__rate_interval]))"
            },
            unit="ops",
            stacked=True,
        ),
        timeseries(
            "API error ratio",
            "Share of requests that failed (no answer, 5xx or an unexpected code; 401/403, 404 "
            "and 429 have alerts of their own), against the alert's threshold.",
            {
                "error ratio": f"(\n  sum({requests})\n  -\n"
                f'  sum(rate(cerby_api_requests_total{{{g}, code=~"2..|401|403|404|429"}}'
                f"[$__rate_interval]) or 0 * {requests})\n)\n/\nsum({requests})",
                "alert threshold": "cerby:threshold:api_error_ratio",
            },
            unit="percentunit",
            maximum=1,
            overrides=alert_threshold(),
        ),
        timeseries(
            "API latency",
            "Time to send a request to Cerby and read its whole answer.",
            latency
            | {
                "mean": "sum(rate(cerby_api_request_duration_seconds_sum"
                f"{{{g}}}[$__rate_interval]))\n/\nsum({requests})"
            },
            unit="s",
        ),
        timeseries(
            "Rate limiting",
            "429 answers per second, and the time left in the exporter's back-off (right axis).",
            {
                "429 answers": f'sum(rate(cerby_api_requests_total{{{g}, code="429"}}'
                "[$__rate_interval])) or vector(0)",
                "back-off left": backoff,
            },
            unit="reqps",
            overrides={
                "back-off left": [
                    schema.DynamicConfigValue("unit", "s"),
                    schema.DynamicConfigValue("custom.axisPlacement", viz.AxisPlacement.RIGHT),
                ]
            },
            width=24,
        ),
        sdk.Row("Exporter"),
        timeseries(
            "Cache hit ratio",
            "Share of job lookups answered from fresh cached data.",
            {
                "hit ratio": f'sum(rate(cerby_cache_requests_total{{{g}, result="hit"}}'
                "[$__rate_interval]))\n/\n"
                f"sum(rate(cerby_cache_requests_total{{{g}}}[$__rate_interval]))"
            },
            unit="percentunit",
            maximum=1,
            width=8,
        ),
        timeseries(
            "Scrape duration",
            "Seconds each scrape spent refreshing job data (cerby_scrape_duration_seconds) and "
            "the whole scrape as Prometheus saw it.",
            {
                "{{instance}}": f"max by (instance) (cerby_scrape_duration_seconds{{{g}}})",
                "{{instance}} (Prometheus)": f"max by (instance) (scrape_duration_seconds{{{g}}})",
            },
            unit="s",
            width=8,
        ),
        timeseries(
            "Tracked and stale jobs",
            "Tracked job IDs (configured and learned), those whose data is too old to show, "
            "and those whose latest fetch failed.",
            {
                "tracked": f"sum(cerby_tracked_jobs{{{g}}})",
                "stale": f"sum(cerby_stale_jobs{{{g}}})",
                "failing to fetch": failing,
            },
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
        sdk.Row("Webhooks"),
        timeseries(
            "Webhook deliveries by result",
            "Deliveries to the webhook receiver per second, by result: accepted, duplicate "
            "(a retry of a stored event) and ignored (no job in it) are answered 2xx; "
            "bad_signature, stale_timestamp and malformed are refused for good; unknown_key "
            "and unavailable are answered 503 for Cerby to retry; too_large is refused.",
            {
                "{{result}}": "sum by (result) "
                f"(rate(cerby_webhook_requests_total{{{g}}}[$__rate_interval]))"
            },
            unit="reqps",
            stacked=True,
            overrides={name: [fixed(color)] for name, color in WEBHOOK_RESULT_COLORS.items()},
        ),
        timeseries(
            "Time since the last verified delivery",
            "Seconds since the webhook receiver last verified a delivery (kept across restarts "
            "in the state file), against the threshold of the alert CerbyWebhooksSilent. "
            "Empty for a receiver that never verified one.",
            {
                "{{instance}}": "time() - max by (instance) "
                f"(cerby_webhook_last_event_timestamp_seconds{{{g}}} > 0)",
                "alert threshold": "cerby:threshold:webhook_silence_seconds",
            },
            unit="s",
            overrides=alert_threshold(),
        ),
        timeseries(
            "Tracked jobs by source",
            "Job IDs collected, by where they came from: configured (flags, job-ID file) or "
            "learned from webhooks.",
            {"{{source}}": f"sum by (source) (cerby_tracked_jobs{{{g}}})"},
            stacked=True,
        ),
        timeseries(
            "Forgotten and dropped jobs",
            "Learned jobs no longer tracked: forgotten after --job-retention in a terminal "
            "state, or to make room under --max-jobs; and jobs not tracked at all because "
            "--max-jobs was reached with every learned job in flight (alert CerbyJobsDropped).",
            {
                "forgotten ({{reason}})": "sum by (reason) "
                f"(increase(cerby_jobs_forgotten_total{{{g}}}[$__rate_interval]))",
                "dropped at the cap": "sum(increase(cerby_jobs_dropped_total"
                f"{{{g}}}[$__rate_interval]))",
            },
            overrides={"dropped at the cap": [fixed("red")]},
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
        items,
    )


DASHBOARDS = {
    "cerby-jobs-overview.json": overview,
    "cerby-exporter-health.json": exporter_health,
}


def render(build: Callable[[], schema.Dashboard]) -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


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
