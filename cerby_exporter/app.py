"""The HTTP application: routes from request to response, with no sockets in sight.

`create_app(settings, redactor)` wires settings -> client -> cache -> collector and returns an
`App` whose `handle()` the server calls for every request; tests call it directly or through a
real socket.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import httpx

from cerby_exporter import __version__
from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import Entry, JobCache, TTLPolicy
from cerby_exporter.client import ApiKey, CerbyClient
from cerby_exporter.collector import Collector, JobPart, View
from cerby_exporter.exposition import EMPTY_PREFIX, gzip_tail
from cerby_exporter.filebytes import FileBytes
from cerby_exporter.jobids import JobIdSource, is_job_id, merge, normalize_job_id
from cerby_exporter.logs import Redactor
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.settings import Settings

log = logging.getLogger(__name__)

TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_FORMAT: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
HTML: Final = "text/html; charset=utf-8"
PLAIN: Final = "text/plain; charset=utf-8"
SCRAPE_TIMEOUT_HEADER: Final = "x-prometheus-scrape-timeout-seconds"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-case names."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = PLAIN
    headers: tuple[tuple[str, str], ...] = ()
    more: tuple[bytes | FileBytes, ...] = ()
    """Further bytes of the body, sent after `body` as they are: the job part of an exposition,
    kept between scrapes, goes out from where it lies instead of being copied into a new
    buffer for every answer (a new buffer of megabytes costs more than sending it)."""

    @property
    def length(self) -> int:
        return len(self.body) + sum(len(part) for part in self.more)

    def content(self) -> bytes:
        """The whole body in one buffer."""
        if not self.more:
            return self.body
        return b"".join(
            (self.body, *(part.data if isinstance(part, FileBytes) else part for part in self.more))
        )


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def accepts_gzip(accept_encoding: str) -> bool:
    """True if `gzip` is listed and not refused with `q=0`."""
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() == "gzip":
            quality = params.replace(" ", "").lower()
            return quality not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class App:
    def __init__(self, collector: Collector, close: Callable[[], None]) -> None:
        self._collector = collector
        self._close = close
        self._routes: dict[str, Callable[[Request], Response]] = {
            "/": self._landing,
            "/metrics": self._metrics,
            "/probe": self._probe,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }

    @property
    def ready(self) -> bool:
        return self._collector.ready.is_set()

    def start(self) -> None:
        """Collect once in the background, so /readyz turns ready without waiting for a scrape."""
        threading.Thread(target=self._collector.warm_up, name="warm-up", daemon=True).start()

    def close(self) -> None:
        self._close()

    def handle(self, request: Request) -> Response:
        route = self._routes.get(request.path)
        if route is None:
            return Response(404, b"404 not found: see / for the endpoints\n")
        return route(request)

    def _metrics(self, request: Request) -> Response:
        openmetrics = wants_openmetrics(request.headers.get("accept", ""))
        jobs, rest = self._collector.scrape_parts(
            request.headers.get(SCRAPE_TIMEOUT_HEADER), openmetrics
        )
        return _exposition(request, rest, openmetrics, jobs)

    def _probe(self, request: Request) -> Response:
        targets = request.query.get("target", [])
        if len(targets) != 1 or not is_job_id(targets[0]):
            return Response(400, b"400 bad request: target must be one job ID (8-4-4-4-12 hex)\n")
        openmetrics = wants_openmetrics(request.headers.get("accept", ""))
        body = self._collector.probe(
            normalize_job_id(targets[0]), request.headers.get(SCRAPE_TIMEOUT_HEADER), openmetrics
        )
        return _exposition(request, body, openmetrics)

    def _healthz(self, _request: Request) -> Response:
        return Response(200, b"ok\n")

    def _readyz(self, _request: Request) -> Response:
        if self.ready:
            return Response(200, b"ready\n")
        return Response(503, b"not ready: first collection not attempted yet\n")

    def _landing(self, _request: Request) -> Response:
        ids = self._collector.tracked()
        page = landing_page(ids, self._collector.known())
        return Response(200, page.encode(), HTML)


def _exposition(
    request: Request, body: bytes, openmetrics: bool, jobs: JobPart | None = None
) -> Response:
    """`body`, after the job part if one is given. Compressed, it is one gzip member whose
    start is the job part as deflated once (sent from its file), the rest stored after it."""
    content_type = OPENMETRICS_FORMAT if openmetrics else TEXT_FORMAT
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        headers = (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"))
        if jobs is None:
            return Response(
                200, EMPTY_PREFIX.deflated, content_type, headers, (gzip_tail(EMPTY_PREFIX, body),)
            )
        prefix, deflated = jobs.gzip_prefix()
        return Response(200, b"", content_type, headers, (deflated, gzip_tail(prefix, body)))
    vary = (("Vary", "Accept-Encoding"),)
    if jobs is None:
        return Response(200, body, content_type, vary)
    return Response(200, jobs.body, content_type, vary, (body,))


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _row(job_id: str, entry: Entry | None) -> str:
    job = entry.job if entry is not None else None
    status = "" if job is None else job.status
    if job is not None and status == "unknown" and job.raw_status:
        status = f"unknown ({job.raw_status})"
    problems = []
    if entry is not None and entry.error is not None:
        problems.append(f"fetch failed: {entry.error}")
    elif entry is None:
        problems.append("not fetched yet")
    if job is not None and job.status == "error" and job.error is not None:
        problems.append(f"job error: {job.error.error_type or 'unspecified'}")
    cells = (
        job_id,
        status,
        "" if job is None else job.workflow_type or "",
        "" if job is None else job.provider or "",
        "" if job is None else job.trigger or "",
        "" if entry is None else _when(entry.fetched_at),
        "; ".join(problems),
    )
    css = ' class="bad"' if problems else ""
    return f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def landing_page(ids: tuple[str, ...], entries: Mapping[str, Entry]) -> str:
    """The tracked jobs as a person would look at them, from the cache: it fetches nothing."""
    rows = "\n".join(_row(job_id, entries.get(job_id)) for job_id in ids)
    probe = f"/probe?target={ids[0]}" if ids else "/probe?target=JOB_ID"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cerby exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}tr.bad td{{background:#fee}}
code{{background:#f4f4f4}}</style></head>
<body><h1>Cerby exporter</h1>
<p>Version {html.escape(__version__)}. Endpoints:
<a href="/metrics">/metrics</a>, <a href="{html.escape(probe)}">/probe</a>,
<a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.</p>
<h2>Tracked jobs ({len(ids)})</h2>
<table><thead><tr><th>Job ID</th><th>Status</th><th>Workflow type</th><th>Provider</th>
<th>Trigger</th><th>Last fetch</th><th>Error</th></tr></thead>
<tbody>
{rows}
</tbody></table>
</body></html>
"""


def create_app(
    settings: Settings,
    redactor: Redactor,
    *,
    transport: httpx.BaseTransport | None = None,
) -> App:
    """Build every part from settings, once, and hand each its collaborators."""
    if settings.base_url is None:
        raise ValueError("create_app needs an API URL")
    metrics = ExporterMetrics()
    gate = RateLimitGate(time.time)
    key = ApiKey(
        settings.api_key.get_secret_value() if settings.api_key is not None else None,
        settings.api_key_file,
        redactor.add,
    )
    client = CerbyClient(
        settings.base_url,
        key,
        metrics,
        gate,
        request_timeout=settings.request_timeout,
        max_connections=settings.max_concurrency,
        retries=settings.retries,
        rate_limit_backoff=settings.rate_limit_backoff,
        ca_bundle=settings.ca_bundle,
        transport=transport,
    )
    policy = TTLPolicy(settings.cache_ttl, settings.terminal_cache_ttl)
    cache = JobCache(
        client,
        policy,
        metrics,
        gate,
        max_jobs=settings.max_jobs,
        max_concurrency=settings.max_concurrency,
    )
    view = View(
        cache_ttl=settings.cache_ttl,
        terminal_cache_ttl=settings.terminal_cache_ttl,
        max_staleness=settings.max_staleness,
        sparse_status=settings.status_series == "sparse",
        creator_labels=settings.include_creator_labels,
    )
    collector = Collector(
        view,
        policy,
        JobIdSource(
            merge(normalize_job_id(i) for i in settings.job_ids),
            settings.job_ids_file,
            settings.max_jobs,
        ),
        cache,
        client,
        metrics,
        gate,
        default_scrape_timeout=settings.scrape_timeout,
        scrape_timeout_offset=settings.scrape_timeout_offset,
    )

    def close() -> None:
        cache.close()
        client.close()

    return App(collector, close)
