"""From cached jobs to an exposition: the metric contract lives here.

`Collector.scrape_parts()` refreshes what is due, within the scrape's deadline, then writes::

    # HELP cerby_job_status Status of the job, 1 for the current one. Job data is cached ...
    # TYPE cerby_job_status gauge
    cerby_job_status{job_id="2f0c…",workflow_type="setup_mfa",provider="x",status="created"} 0
    ...
    cerby_job_status{job_id="2f0c…",workflow_type="setup_mfa",provider="x",status="error"} 1
    cerby_job_can_retry{job_id="2f0c…",workflow_type="setup_mfa",provider="x"} 0
    cerby_job_info{job_id="2f0c…",workflow_type="setup_mfa",provider="x",trigger="manual",
                   account_id="9a1e…",account_name="Brand"} 1
    cerby_job_created_timestamp_seconds{job_id="2f0c…"} 1.7324064e+09
    cerby_job_updated_timestamp_seconds{job_id="2f0c…"} 1.7324067e+09
    cerby_job_error_info{job_id="2f0c…",error_type="login_failed",user_required="true"} 1
    cerby_job_fetch_success{job_id="2f0c…"} 1
    cerby_job_last_fetch_timestamp_seconds{job_id="2f0c…"} 1.7324068e+09
    cerby_jobs{workflow_type="setup_mfa",provider="x",status="error"} 1
    cerby_up 1
    cerby_scrape_duration_seconds 0.012
    cerby_tracked_jobs 20
    cerby_stale_jobs 0
    cerby_api_backoff_until_timestamp_seconds 0
    cerby_exporter_build_info{version="0.1.0"} 1

followed by the counters and histogram of `metrics.ExporterMetrics` and prometheus_client's
`process_*` metrics (resident memory, CPU, open fds). Label values Cerby leaves
null are empty strings. A job with no data yet, or data too old to trust, keeps only
`cerby_job_fetch_success` (at 0).

The job part (the per-job families and `cerby_jobs`, nearly all of the bytes) is a `JobPart`:
rendered once per change of the data behind it and compressed at most once, then sent as is by
every scrape until the next change. The health and self-metrics lines, a few dozen, are rendered
by prometheus_client from the exporter's own registry for every scrape.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from cerby_exporter import __version__
from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import Entry, JobCache, Round, TTLPolicy
from cerby_exporter.client import CerbyClient
from cerby_exporter.exposition import (
    GzipPrefix,
    GzipWriter,
    escape_label_value,
    header,
    inflate,
    label_text,
    sample,
)
from cerby_exporter.jobids import JobIdSource
from cerby_exporter.landing import Row
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import STATUSES, Job

JOB_FAMILIES: Final = (
    "cerby_job_status",
    "cerby_job_can_retry",
    "cerby_job_info",
    "cerby_job_created_timestamp_seconds",
    "cerby_job_updated_timestamp_seconds",
    "cerby_job_error_info",
    "cerby_job_fetch_success",
    "cerby_job_last_fetch_timestamp_seconds",
)


@dataclass(frozen=True, slots=True)
class View:
    """How the exposition looks, fixed for the life of the process."""

    cache_ttl: float
    terminal_cache_ttl: float
    max_staleness: float
    sparse_status: bool
    creator_labels: bool

    def help_texts(self) -> dict[str, str]:
        cached = (
            f"Job data is cached: {self.cache_ttl:g}s while in flight, "
            f"{self.terminal_cache_ttl:g}s once finished or failed."
        )
        return {
            "cerby_job_status": "Status of the job, 1 for the current one "
            "(created, started, running, retrying, finished, error, unknown). " + cached,
            "cerby_job_can_retry": "1 if Cerby can retry the job, 0 if not. " + cached,
            "cerby_job_info": "Descriptive labels of the job, value 1. " + cached,
            "cerby_job_created_timestamp_seconds": "When Cerby created the job. " + cached,
            "cerby_job_updated_timestamp_seconds": "When Cerby last updated the job. " + cached,
            "cerby_job_error_info": "Error details of a job in status error, value 1. " + cached,
            "cerby_job_fetch_success": "1 if the latest fetch of the job succeeded and its data "
            "is shown, else 0.",
            "cerby_job_last_fetch_timestamp_seconds": "When the job data now shown was fetched "
            "from Cerby. " + cached,
            "cerby_jobs": "Tracked jobs by workflow type, provider and status. " + cached,
        }


Shown = tuple[str, Entry | None]
"""A tracked job as one rendering sees it: its ID, and its entry if its data is shown."""


def _kind(job_id: str, job: Job) -> str:
    return label_text(
        [
            ("job_id", job_id),
            ("workflow_type", job.workflow_type or ""),
            ("provider", job.provider or ""),
        ]
    )


def _status(job_id: str, entry: Entry | None, view: View) -> str:
    if entry is None or entry.job is None:
        return ""
    kind = _kind(job_id, entry.job)
    current = entry.job.status
    statuses = (current,) if view.sparse_status else STATUSES
    return "".join(
        f'cerby_job_status{{{kind},status="{s}"}} {1 if s == current else 0}\n' for s in statuses
    )


def _can_retry(job_id: str, entry: Entry | None, _view: View) -> str:
    if entry is None or entry.job is None or entry.job.can_retry is None:
        return ""
    return f"cerby_job_can_retry{{{_kind(job_id, entry.job)}}} {int(entry.job.can_retry)}\n"


def _info(job_id: str, entry: Entry | None, view: View) -> str:
    if entry is None or entry.job is None:
        return ""
    job = entry.job
    more = [
        ("trigger", job.trigger or ""),
        ("account_id", job.account_id or ""),
        ("account_name", job.account_name or ""),
    ]
    if view.creator_labels:
        more += [("creator_id", job.creator_id or ""), ("creator_name", job.creator_name or "")]
    return f"cerby_job_info{{{_kind(job_id, job)},{label_text(more)}}} 1\n"


def _timestamp(name: str, job_id: str, at: float | None) -> str:
    return "" if at is None else sample(name, [("job_id", job_id)], at)


def _created(job_id: str, entry: Entry | None, _view: View) -> str:
    job = None if entry is None else entry.job
    return _timestamp(
        "cerby_job_created_timestamp_seconds", job_id, None if job is None else job.created_at
    )


def _updated(job_id: str, entry: Entry | None, _view: View) -> str:
    job = None if entry is None else entry.job
    return _timestamp(
        "cerby_job_updated_timestamp_seconds", job_id, None if job is None else job.updated_at
    )


def _error_info(job_id: str, entry: Entry | None, _view: View) -> str:
    job = None if entry is None else entry.job
    if job is None or job.status != "error" or job.error is None:
        return ""
    required = job.error.user_required
    return sample(
        "cerby_job_error_info",
        [
            ("job_id", job_id),
            ("error_type", job.error.error_type or ""),
            ("user_required", "" if required is None else str(required).lower()),
        ],
        1,
    )


def _fetch_success(job_id: str, entry: Entry | None, _view: View) -> str:
    ok = entry is not None and entry.job is not None and entry.ok
    return f'cerby_job_fetch_success{{job_id="{escape_label_value(job_id)}"}} {int(ok)}\n'


def _last_fetch(job_id: str, entry: Entry | None, _view: View) -> str:
    at = None if entry is None or entry.job is None else entry.fetched_at
    return _timestamp("cerby_job_last_fetch_timestamp_seconds", job_id, at)


FAMILY_LINES: Final[tuple[Callable[[str, Entry | None, View], str], ...]] = (
    _status,
    _can_retry,
    _info,
    _created,
    _updated,
    _error_info,
    _fetch_success,
    _last_fetch,
)
"""One job's lines in each of `JOB_FAMILIES`, in that order ('' where it has none); the
entry is None when the job's data is not shown."""


RENDER_CHUNK: Final = 128
"""Jobs rendered into one piece of text: the rendering never holds more than a piece at once."""
RENDER_TURN: Final = 0.005
"""Seconds the rendering runs before it lets the loop serve others, as long as Python lets one
thread hold the interpreter before handing it over."""


def job_text(
    rows: Sequence[Shown], view: View, help_texts: Mapping[str, str], aggregate: bool
) -> Iterator[str]:
    """The job families of `rows` (and `cerby_jobs`, if `aggregate`), piece by piece.

    The text format wants every family in one group, so it goes family by family over all the
    jobs; each piece covers at most `RENDER_CHUNK` jobs of one family.
    """
    for name, lines in zip(JOB_FAMILIES, FAMILY_LINES, strict=True):
        yield header(name, help_texts[name])
        for start in range(0, len(rows), RENDER_CHUNK):
            yield "".join(
                lines(job_id, entry, view) for job_id, entry in rows[start : start + RENDER_CHUNK]
            )
    if aggregate:
        parts = [header("cerby_jobs", help_texts["cerby_jobs"])]
        shown = (entry.job for _, entry in rows if entry is not None and entry.job is not None)
        for (workflow, provider, status), count in count_jobs(shown).items():
            labels = [("workflow_type", workflow), ("provider", provider), ("status", status)]
            parts.append(sample("cerby_jobs", labels, count))
        yield "".join(parts)


def shown_until(entry: Entry, policy: TTLPolicy, max_staleness: float) -> float:
    """Wall time after which a job's data is too old to show.

    Data is due for refresh after its TTL (long for terminal jobs); once due, it is shown for
    `max_staleness` more while refreshes fail, then withdrawn rather than passed off as current.
    """
    if entry.job is None or entry.fetched_at is None:
        return -float("inf")
    return (
        entry.fetched_at + policy.seconds(Entry(entry.job, entry.fetched_at, None)) + max_staleness
    )


def count_jobs(jobs: Iterable[Job]) -> dict[tuple[str, str, str], int]:
    """`cerby_jobs`: every status of every (workflow type, provider) seen, zeros included."""
    seen = Counter((job.workflow_type or "", job.provider or "", job.status) for job in jobs)
    kinds = sorted({(workflow, provider) for workflow, provider, _ in seen})
    return {
        (workflow, provider, status): seen[(workflow, provider, status)]
        for workflow, provider in kinds
        for status in STATUSES
    }


def scrape_budget(header_value: str | None, default: float, offset: float) -> float:
    """Seconds this scrape may spend fetching: Prometheus' own timeout less a margin to answer.

    The margin never takes more than half of the timeout.
    """
    timeout = default
    if header_value is not None:
        try:
            parsed = float(header_value)
        except ValueError:
            parsed = 0.0
        if 0 < parsed < float("inf"):
            timeout = parsed
    return max(timeout - offset, timeout / 2)


class JobPart:
    """The job part of the exposition, compressed once when it is made; uncompressed only for
    the first scrape that asks for it so (Prometheus asks for gzip).

    It stands for the tracked IDs `ids` at cache version `version`, until the wall clock passes
    `valid_until`, when the first shown job's data turns too old to show. A compressed scrape
    is one gzip member: this part as deflated once (`gzip`), then the rest of the scrape.
    """

    __slots__ = ("_plain", "gzip", "ids", "stale", "valid_until", "version")

    def __init__(
        self,
        ids: tuple[str, ...],
        version: int,
        valid_until: float,
        gzip: GzipPrefix,
        stale: int,
    ) -> None:
        self.ids = ids
        self.version = version
        self.valid_until = valid_until
        self.gzip = gzip
        self.stale = stale
        """Tracked jobs whose data is too old to show (`cerby_stale_jobs`)."""
        self._plain: asyncio.Future[bytes] | None = None

    def serves(self, ids: tuple[str, ...], version: int, now: float) -> bool:
        """True if these bytes are what the entries of `version` render to at `now`."""
        return (
            version >= 0
            and self.version >= version
            and (self.ids is ids or self.ids == ids)
            and now <= self.valid_until
        )

    async def plain(self) -> bytes:
        """The part uncompressed, inflated once in a thread; concurrent scrapes share it."""
        if self._plain is None:
            self._plain = asyncio.ensure_future(asyncio.to_thread(inflate, self.gzip))
        return await asyncio.shield(self._plain)


@dataclass(frozen=True, slots=True)
class Health:
    """The exporter's health as of one scrape: what `HealthCollector` yields."""

    up: bool = False
    scrape_duration: float = 0.0
    tracked: Mapping[str, int] = field(default_factory=lambda: {"configured": 0, "webhook": 0})
    stale: int = 0
    backoff_until: float = 0.0


class HealthCollector:
    """The health gauges, for the exporter's own registry. Yields (values illustrative)::

    # HELP cerby_up 1 if the latest API round reached Cerby and it took the key.
    # TYPE cerby_up gauge
    cerby_up 1.0
    # HELP cerby_scrape_duration_seconds Seconds this scrape spent refreshing job data ...
    # TYPE cerby_scrape_duration_seconds gauge
    cerby_scrape_duration_seconds 0.012
    # HELP cerby_tracked_jobs Job IDs tracked, by source: configured, or learned from webhooks.
    # TYPE cerby_tracked_jobs gauge
    cerby_tracked_jobs{source="configured"} 20.0
    cerby_tracked_jobs{source="webhook"} 3.0
    # HELP cerby_stale_jobs Tracked jobs whose data is too old to show ...
    # TYPE cerby_stale_jobs gauge
    cerby_stale_jobs 0.0
    # HELP cerby_api_backoff_until_timestamp_seconds When the rate-limit back-off ends ...
    # TYPE cerby_api_backoff_until_timestamp_seconds gauge
    cerby_api_backoff_until_timestamp_seconds 0.0
    # HELP cerby_exporter_build_info Version of the exporter, value 1.
    # TYPE cerby_exporter_build_info gauge
    cerby_exporter_build_info{version="0.1.0"} 1.0
    """

    def __init__(self, max_staleness: float) -> None:
        self.current = Health()
        self._stale_help = (
            "Tracked jobs whose data is too old to show (refreshes failing for longer "
            f"than {max_staleness:g}s past due)."
        )

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        health = self.current
        yield GaugeMetricFamily(
            "cerby_up",
            "1 if the latest API round reached Cerby and it took the key.",
            value=float(health.up),
        )
        yield GaugeMetricFamily(
            "cerby_scrape_duration_seconds",
            "Seconds this scrape spent refreshing job data from Cerby.",
            value=health.scrape_duration,
        )
        tracked = GaugeMetricFamily(
            "cerby_tracked_jobs",
            "Job IDs tracked, by source: configured (flags and the job-ID file), or learned "
            "from webhooks.",
            labels=["source"],
        )
        for source, count in health.tracked.items():
            tracked.add_metric([source], count)
        yield tracked
        yield GaugeMetricFamily("cerby_stale_jobs", self._stale_help, value=health.stale)
        yield GaugeMetricFamily(
            "cerby_api_backoff_until_timestamp_seconds",
            "When the rate-limit back-off ends, 0 when none is in force.",
            value=health.backoff_until,
        )
        build = GaugeMetricFamily(
            "cerby_exporter_build_info", "Version of the exporter, value 1.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build


def render_registry(registry: CollectorRegistry, openmetrics: bool) -> bytes:
    """prometheus_client's exposition of `registry`; OpenMetrics' ends with `# EOF`."""
    if openmetrics:
        return openmetrics_exposition.generate_latest(registry)  # type: ignore[no-any-return,no-untyped-call]
    return generate_latest(registry)


class Collector:
    """Refreshes the cache for a scrape and renders the answer."""

    def __init__(
        self,
        view: View,
        policy: TTLPolicy,
        job_ids: JobIdSource,
        cache: JobCache,
        client: CerbyClient,
        metrics: ExporterMetrics,
        gate: RateLimitGate,
        registry: CollectorRegistry,
        health: HealthCollector,
        *,
        default_scrape_timeout: float,
        scrape_timeout_offset: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._view = view
        self._policy = policy
        self._ids = job_ids
        self._cache = cache
        self._client = client
        self._gate = gate
        self._default_timeout = default_scrape_timeout
        self._offset = scrape_timeout_offset
        self._clock = clock
        self._wall = wall_clock
        self._help = view.help_texts()
        self._metrics = metrics
        self._registry = registry
        self._health = health
        self._job_part: JobPart | None = None
        self._pending: asyncio.Future[JobPart] | None = None
        self.job_part_renders = 0
        """How many times the job part was rendered: once per change, not once per scrape."""
        self._key_checked_at = -float("inf")
        self.ready = asyncio.Event()
        """Set once the first collection has been attempted, whatever its outcome."""

    def tracked(self) -> tuple[str, ...]:
        return self._ids.current()

    def landing_rows(self) -> list[Row]:
        """The tracked jobs as the landing page shows them, without fetching anything."""
        ids = self._ids.current()
        entries = self._cache.peek(ids)
        now = self._wall()
        rows = []
        for job_id in ids:
            entry = entries.get(job_id)
            stale = (
                entry is not None
                and entry.job is not None
                and now > shown_until(entry, self._policy, self._view.max_staleness)
            )
            rows.append(Row(job_id, entry, stale))
        return rows

    async def warm_up(self) -> None:
        """One collection at start, so readiness does not wait for Prometheus' first scrape."""
        await self._ids.reload()
        await self._refresh(self._ids.current(), self._clock() + self._default_timeout)

    async def scrape_parts(
        self, timeout_header: str | None, openmetrics: bool
    ) -> tuple[JobPart, bytes]:
        """The exposition in two parts: the job part, shared by scrapes until its data changes,
        and the rest (health and self-metrics, ending in `# EOF` for OpenMetrics), rendered for
        this scrape. The job part is the same in both formats."""
        started = self._clock()
        await self._ids.reload()
        ids = self._ids.current()
        deadline = started + scrape_budget(timeout_header, self._default_timeout, self._offset)
        result = await self._refresh(ids, deadline)
        duration = self._clock() - started
        jobs = await self._jobs(ids, result)
        self._health.current = Health(
            up=bool(self._cache.key_verdict()),
            scrape_duration=duration,
            tracked=self._ids.counts(),
            stale=jobs.stale,
            backoff_until=self._gate.until if self._gate.closed() else 0.0,
        )
        return jobs, render_registry(self._registry, openmetrics)

    async def _jobs(self, ids: tuple[str, ...], result: Round) -> JobPart:
        """The job part for this scrape: the one already made if it still stands, else anew.

        One rendering at a time. A scrape that finds one under way waits for it; if that one
        was of older data, the scrape then makes the next one from what the cache holds by
        then, which every scrape waiting meanwhile shares. During a refresh round every fetch
        changes the data: renderings follow one another instead of piling up, one per scrape.
        """
        while True:
            part = self._job_part
            if part is not None and part.serves(ids, result.version, self._wall()):
                return part
            if self._pending is None:
                break
            await asyncio.wait([self._pending])
        # The part made before no longer stands: let it go before making the next one, so that
        # two are never held at once (answers being written keep theirs meanwhile).
        self._job_part = None
        version = self._cache.version
        rows, stale, valid_until = self._shown(ids, self._cache.peek(ids), self._wall())
        making = asyncio.ensure_future(self._make_part(ids, version, rows, stale, valid_until))
        self._pending = making
        making.add_done_callback(self._made)
        return await asyncio.shield(making)

    def _made(self, making: asyncio.Future[JobPart]) -> None:
        if self._pending is making:
            self._pending = None
        if not making.cancelled() and making.exception() is None:
            self._job_part = making.result()

    async def _make_part(
        self,
        ids: tuple[str, ...],
        version: int,
        rows: Sequence[Shown],
        stale: int,
        valid_until: float,
    ) -> JobPart:
        """Render and compress a piece at a time, letting the loop run between pieces."""
        writer = GzipWriter()
        turn_ends = time.monotonic() + RENDER_TURN
        for text in job_text(rows, self._view, self._help, True):
            writer.write(text.encode())
            if time.monotonic() >= turn_ends:
                await asyncio.sleep(0)
                turn_ends = time.monotonic() + RENDER_TURN
        self.job_part_renders += 1
        return JobPart(ids, version, valid_until, writer.prefix(), stale)

    async def probe(self, job_id: str, timeout_header: str | None, openmetrics: bool) -> bytes:
        """The per-job families of one job, through the same cache as `/metrics`."""
        started = self._clock()
        deadline = started + scrape_budget(timeout_header, self._default_timeout, self._offset)
        entries = (await self._cache.refresh([job_id], deadline)).entries
        rows, _, _ = self._shown((job_id,), entries, self._wall())
        body = "".join(job_text(rows, self._view, self._help, aggregate=False))
        return body.encode() + (b"# EOF\n" if openmetrics else b"")

    async def _refresh(self, ids: Sequence[str], deadline: float) -> Round:
        """Refresh what is due; with nothing to fetch, a key check keeps `cerby_up` honest."""
        result = await self._cache.refresh(ids, deadline)
        now = self._clock()
        never_asked = result.key_accepted is None
        if never_asked or (not ids and now - self._key_checked_at >= self._policy.in_flight):
            self._key_checked_at = now
            await self._cache.check_key(self._client.check_key, deadline)
        self.ready.set()
        return result

    def _shown(
        self, ids: Sequence[str], entries: Mapping[str, Entry], now: float
    ) -> tuple[list[Shown], int, float]:
        """Each job with its entry if its data is shown at `now`; how many are stale; and the
        wall time until which this holds (when the first shown job's data turns too old)."""
        rows: list[Shown] = []
        stale = 0
        valid_until = float("inf")
        for job_id in ids:
            entry = entries.get(job_id)
            if entry is None or entry.job is None:
                rows.append((job_id, None))
                continue
            until = shown_until(entry, self._policy, self._view.max_staleness)
            if now <= until:
                rows.append((job_id, entry))
                valid_until = min(valid_until, until)
            else:
                rows.append((job_id, None))
                stale += 1
        return rows, stale, valid_until
