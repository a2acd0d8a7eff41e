"""The landing page: what a person on call looks at first, from the cache (it fetches nothing).

Failures come first, and among them the failed removals of a departed person's access, which
leave a security hole rather than an operational chore; then jobs in flight; finished jobs last.
The page refreshes itself with a `<meta http-equiv="refresh">`, so it needs no JavaScript.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cerby_exporter import __version__
from cerby_exporter.cache import Entry
from cerby_exporter.model import Job

REFRESH_SECONDS: Final = 30
IN_FLIGHT: Final = frozenset({"created", "started", "running", "retrying", "unknown"})
ACCESS_REMOVAL_TRIGGERS: Final = frozenset({"user_deprovisioned"})


def is_access_removal(job: Job) -> bool:
    """A job that takes a person's access away: deprovisioning, or any `revoke_*` workflow."""
    return job.trigger in ACCESS_REMOVAL_TRIGGERS or (job.workflow_type or "").startswith("revoke_")


@dataclass(frozen=True, slots=True)
class Row:
    job_id: str
    entry: Entry | None
    stale: bool

    @property
    def job(self) -> Job | None:
        return None if self.entry is None else self.entry.job

    @property
    def rank(self) -> int:
        """0 failed access removal, 1 failed, 2 in flight, 3 no data, 4 finished."""
        job = self.job
        if job is None:
            return 3
        if job.status == "error":
            return 0 if is_access_removal(job) else 1
        return 2 if job.status in IN_FLIGHT else 4

    @property
    def css(self) -> str:
        return ("removal failed", "failed", "in-flight", "no-data", "finished")[self.rank]


def order(rows: list[Row]) -> list[Row]:
    """Worst first; within a group the latest update first."""
    return sorted(rows, key=lambda r: (r.rank, -((r.job and r.job.updated_at) or 0.0), r.job_id))


@dataclass(frozen=True, slots=True)
class Summary:
    failed: int
    needs_person: int
    failed_removals: int
    in_flight: int
    stale: int

    @classmethod
    def of(cls, rows: list[Row]) -> Summary:
        failed = [r.job for r in rows if r.job is not None and r.job.status == "error"]
        return cls(
            failed=len(failed),
            needs_person=sum(1 for j in failed if j.error is not None and j.error.user_required),
            failed_removals=sum(1 for j in failed if is_access_removal(j)),
            in_flight=sum(1 for r in rows if r.rank == 2),
            stale=sum(1 for r in rows if r.stale),
        )


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cells(row: Row) -> tuple[str, ...]:
    job, entry = row.job, row.entry
    status = "" if job is None else job.status
    if job is not None and status == "unknown" and job.raw_status:
        status = f"unknown ({job.raw_status})"
    if row.rank == 0:
        status = "error: ACCESS NOT REMOVED"
    problems = []
    if entry is None:
        problems.append("not fetched yet")
    elif entry.error is not None:
        problems.append(f"fetch failed: {entry.error}")
    if row.stale:
        problems.append("data too old to show in metrics")
    error = job.error if job is not None and job.status == "error" else None
    if error is not None and error.user_required:
        problems.append("needs a person")
    return (
        row.job_id,
        status,
        "" if job is None else job.workflow_type or "",
        "" if job is None else job.provider or "",
        "" if job is None else job.account_name or "",
        "" if error is None else error.error_type or "unspecified",
        "" if job is None else job.trigger or "",
        "" if entry is None else _when(entry.fetched_at),
        "; ".join(problems),
    )


def _row(row: Row) -> str:
    cells = "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row))
    return f'<tr class="{row.css}" data-rank="{row.rank}">{cells}</tr>'


STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%;table-layout:auto}
td,th{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
td:first-child{font-family:monospace;white-space:nowrap}
th{background:#f0f0f0}
tr.removal.failed td{background:#b00020;color:#fff;font-weight:bold}
tr.failed td{background:#ffd7d7}
tr.in-flight td{background:#fff6d5}
tr.no-data td{color:#666}
.summary{font-size:1.2em;margin:.5em 0 1em}
.summary b.bad{color:#b00020}
code{background:#f4f4f4}
"""


def landing_page(
    rows: list[Row], deliveries: Mapping[str, int] | None = None, now: float | None = None
) -> str:
    ordered = order(rows)
    summary = Summary.of(rows)
    probe = f"/probe?target={rows[0].job_id}" if rows else "/probe?target=JOB_ID"
    parts = [
        f'<b class="bad">{summary.failed_removals} failed access removals</b>'
        if summary.failed_removals
        else "0 failed access removals",
        f"{summary.failed} failed",
        f"{summary.needs_person} failed and needing a person",
        f"{summary.in_flight} in flight",
        f"{summary.stale} stale",
    ]
    if deliveries is not None:
        rejected = sum(n for result, n in deliveries.items() if result not in _ACKNOWLEDGED)
        parts.append(
            f"webhook deliveries: {deliveries.get('accepted', 0)} accepted, {rejected} refused"
        )
    body = "\n".join(_row(row) for row in ordered)
    generated = _when(now) if now is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Cerby exporter</title><style>{STYLE}</style></head>
<body><h1>Cerby exporter</h1>
<p class="summary" id="summary">{" · ".join(parts)}</p>
<p>Version {html.escape(__version__)}; refreshed every {REFRESH_SECONDS} s{
        f", as of {generated}" if generated else ""
    }. Endpoints:
<a href="/metrics">/metrics</a>, <a href="{html.escape(probe)}">/probe</a>,
<a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.</p>
<h2>Tracked jobs ({len(rows)})</h2>
<table id="jobs"><thead><tr><th>Job ID</th><th>Status</th><th>Workflow type</th>
<th>Provider</th><th>Account</th><th>Error type</th><th>Trigger</th><th>Last fetch</th>
<th>Problems</th></tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""


_ACKNOWLEDGED: Final = frozenset({"accepted", "duplicate", "ignored"})
