"""The web application: aiohttp routes from request to response, built from settings.

`create_app(settings, redactor)` wires settings -> job IDs -> client -> cache -> collector and
returns an `aiohttp.web.Application`; the CLI serves it, tests serve it on a loopback port. HTTP
itself (parsing, limits, keep-alive, HEAD, graceful shutdown) is aiohttp's. What is ours: the
exposition, written as the job part (rendered and compressed once per change of data) followed
by this scrape's health and self-metrics; basic auth and headers from the web config; answers in
one line for what is refused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import httpx
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from multidict import istr
from prometheus_client import CollectorRegistry, ProcessCollector

from cerby_exporter import __version__
from cerby_exporter.backoff import RateLimitGate
from cerby_exporter.cache import JobCache, TTLPolicy
from cerby_exporter.client import ApiKey, CerbyClient
from cerby_exporter.collector import Collector, HealthCollector, JobPart, View
from cerby_exporter.exposition import EMPTY_PREFIX, gzip_tail
from cerby_exporter.jobids import JobIdSource, is_job_id, merge, normalize_job_id
from cerby_exporter.landing import landing_page
from cerby_exporter.logs import Redactor
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.settings import Settings
from cerby_exporter.webconfig import WebConfigSource

if TYPE_CHECKING:
    from cerby_exporter.signatures import KeysSource
    from cerby_exporter.state import AsyncState, StateStore
    from cerby_exporter.webhook import Discovery, Receiver

log = logging.getLogger(__name__)

TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_FORMAT: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SCRAPE_TIMEOUT_HEADER: Final = "X-Prometheus-Scrape-Timeout-Seconds"
WEBHOOK_MAX_BODY_BYTES: Final = 1024 * 1024
"""Larger webhook bodies get 413; every other path takes no body at all."""
MAX_QUERY_BYTES: Final = 2048
"""A job ID is 36 characters; a query string longer than this is not a scrape."""
GET_METHODS: Final = ("GET", "HEAD")
SERVER_NAME: Final = f"cerby-exporter/{__version__}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def refusal(
    status: int, text: str, headers: Mapping[str, str] | Mapping[istr, str] | None = None
) -> web.Response:
    """A refused request's answer: one line of plain text that says why."""
    return web.Response(status=status, text=f"{status} {text}\n", headers=headers)


@dataclass
class Exporter:
    """The parts `create_app` built, which the app's start and stop hooks drive."""

    collector: Collector
    cache: JobCache
    client: CerbyClient
    state: AsyncState | None = None
    discovery: Discovery | None = None
    web_config: WebConfigSource | None = None
    keys: KeysSource | None = None
    receiver: Receiver | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self, _app: web.Application) -> None:
        """Restore what the state file knew, then collect once in the background, so /readyz
        turns ready without waiting for a scrape."""
        if self.discovery is not None:
            await self.discovery.restore()
            self.spawn(self.discovery.sweep_forever(), "state-sweep")
        self.spawn(self.collector.warm_up(), "warm-up")
        if self.web_config is not None:
            self.spawn(self.web_config.watch(), "web-config-watch")
        if self.keys is not None:
            self.spawn(self.keys.watch(), "webhook-keys-watch")

    async def stop_waiting(self, _app: web.Application) -> None:
        """On stop: scrapes waiting for Cerby answer now, with what is cached."""
        self.cache.stop_waiting()

    async def close(self, _app: web.Application) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.cache.close()
        await self.client.close()
        if self.state is not None:
            await self.state.close()  # after the cache: every job it stored is committed


EXPORTER: Final = web.AppKey("exporter", Exporter)


class Routes:
    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter
        self._collector = exporter.collector

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        openmetrics = wants_openmetrics(request.headers.get(hdrs.ACCEPT, ""))
        jobs, rest = await self._collector.scrape_parts(
            request.headers.get(SCRAPE_TIMEOUT_HEADER), openmetrics
        )
        return await _exposition(request, rest, openmetrics, jobs)

    async def probe(self, request: web.Request) -> web.StreamResponse:
        targets = request.query.getall("target", [])
        if len(targets) != 1 or not is_job_id(targets[0]):
            return refusal(400, "bad request: target must be one job ID (8-4-4-4-12 hex)")
        openmetrics = wants_openmetrics(request.headers.get(hdrs.ACCEPT, ""))
        body = await self._collector.probe(
            normalize_job_id(targets[0]), request.headers.get(SCRAPE_TIMEOUT_HEADER), openmetrics
        )
        return await _exposition(request, body, openmetrics)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        if self._collector.ready.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: first collection not attempted yet\n")

    async def landing(self, _request: web.Request) -> web.Response:
        receiver = self._exporter.receiver
        deliveries = receiver.results() if receiver is not None else None
        page = landing_page(self._collector.landing_rows(), deliveries, time.time())
        return web.Response(text=page, content_type="text/html", charset="utf-8")


async def _exposition(
    request: web.Request, rest: bytes, openmetrics: bool, jobs: JobPart | None = None
) -> web.StreamResponse:
    """The job part (if any) then `rest`, written as they lie, without joining them into a new
    buffer. Compressed, it is one gzip member: the job part as deflated once, `rest` stored
    after it."""
    parts: tuple[bytes, ...]
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_TYPE: OPENMETRICS_FORMAT if openmetrics else TEXT_FORMAT,
            hdrs.VARY: "Accept-Encoding",
        }
    )
    if accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
        prefix = EMPTY_PREFIX if jobs is None else jobs.gzip
        parts = (*prefix.chunks, gzip_tail(prefix, rest))
        response.headers[hdrs.CONTENT_ENCODING] = "gzip"
    else:
        parts = (rest,) if jobs is None else (await jobs.plain(), rest)
    response.content_length = sum(len(part) for part in parts)
    await response.prepare(request)
    if request.method != "HEAD":
        for part in parts:
            await response.write(part)
    await response.write_eof()
    return response


def guard(auth: WebConfigSource | None, webhook_path: str | None = None) -> Middleware:
    """The middleware every request passes: method, query size, basic auth, then the route;
    aiohttp's own 404 and 405 reworded as one line (`answer_headers` adds the headers).
    The webhook path takes POST only and no basic auth: Cerby's signature authenticates it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if webhook_path is not None and request.path == webhook_path:
            return await _webhook_guarded(request, handler)
        return await _guarded(request, handler, auth)

    return middleware


def answer_headers(
    auth: WebConfigSource | None,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` hook: the Server header and the web config's headers, also on
    the answers a handler prepared itself to stream (the expositions), which a middleware sees
    only once their headers are sent."""

    async def stamp(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[hdrs.SERVER] = SERVER_NAME
        if auth is not None:
            response.headers.extend(auth.headers)

    return stamp


async def _webhook_guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "POST":
        return refusal(405, "method not allowed", {hdrs.ALLOW: "POST"})
    return await _routed(request, handler)


async def _guarded(
    request: web.Request, handler: Handler, auth: WebConfigSource | None
) -> web.StreamResponse:
    if request.method not in GET_METHODS:
        return refusal(405, "method not allowed", {hdrs.ALLOW: "GET, HEAD"})
    if len(request.query_string) > MAX_QUERY_BYTES:
        return refusal(414, "query string too long")
    if auth is not None:
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        if not await auth.auth.allows(request.path, header):
            challenge = {hdrs.WWW_AUTHENTICATE: 'Basic realm="cerby-exporter", charset="UTF-8"'}
            return refusal(401, "unauthorized", challenge)
    return await _routed(request, handler)


async def _routed(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return refusal(404, "not found: see / for the endpoints")
    except web.HTTPMethodNotAllowed:
        return refusal(405, "method not allowed", {hdrs.ALLOW: "GET, HEAD"})
    except web.HTTPException:
        raise
    except Exception as exc:  # one bad request must not take the others down
        log.error("error serving %s: %s", request.path, type(exc).__name__)
        return refusal(500, "internal error")


def create_app(
    settings: Settings,
    redactor: Redactor,
    state: StateStore | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    web_config: WebConfigSource | None = None,
    keys: KeysSource | None = None,
) -> web.Application:
    """Build every part from settings, once, and hand each its collaborators.

    `state` is the opened state file (None: nothing is kept across restarts); `keys`, the
    webhook signing keys, turns the receiver on (it needs `state`).
    """
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
    source = JobIdSource(
        merge(normalize_job_id(i) for i in settings.job_ids),
        settings.job_ids_file,
        settings.max_jobs,
    )
    registry = CollectorRegistry(auto_describe=False)
    health = HealthCollector(settings.max_staleness)
    registry.register(health)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    async_state = discovery = receiver = None
    if state is not None:
        from cerby_exporter.state import AsyncState
        from cerby_exporter.webhook import Discovery, Receiver, WebhookMetrics

        webhook_metrics = WebhookMetrics()
        async_state = AsyncState(state)
        discovery = Discovery(
            source, cache, async_state, webhook_metrics, retention=settings.job_retention
        )
        cache.on_stored = discovery.save
        if keys is not None:
            registry.register(webhook_metrics)
            receiver = Receiver(keys, async_state, discovery, webhook_metrics)
    elif keys is not None:
        raise ValueError("the webhook receiver needs a state file")
    collector = Collector(
        view,
        policy,
        source,
        cache,
        client,
        metrics,
        gate,
        registry,
        health,
        default_scrape_timeout=settings.scrape_timeout,
        scrape_timeout_offset=settings.scrape_timeout_offset,
    )
    exporter = Exporter(
        collector, cache, client, async_state, discovery, web_config, keys, receiver
    )
    webhook_path = settings.webhook_path if receiver is not None else None
    app = web.Application(
        middlewares=[guard(web_config, webhook_path)], client_max_size=WEBHOOK_MAX_BODY_BYTES
    )
    app.on_response_prepare.append(answer_headers(web_config))
    app[EXPORTER] = exporter
    if receiver is not None:
        app.router.add_post(settings.webhook_path, receiver.handle)
    routes = Routes(exporter)
    app.router.add_get("/", routes.landing)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/probe", routes.probe)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.on_startup.append(exporter.start)
    app.on_shutdown.append(exporter.stop_waiting)
    app.on_cleanup.append(exporter.close)
    return app


def create_webhook_app(app: web.Application, path: str) -> web.Application:
    """The webhook path alone, for `--webhook.listen-address`: a listener an Ingress can publish
    without exposing the metrics. It shares the main app's receiver and lifecycle."""
    receiver = app[EXPORTER].receiver
    if receiver is None:
        raise ValueError("the webhook receiver is not enabled")
    webhook_app = web.Application(
        middlewares=[guard(None, path)], client_max_size=WEBHOOK_MAX_BODY_BYTES
    )
    webhook_app.on_response_prepare.append(answer_headers(None))
    webhook_app.router.add_post(path, receiver.handle)
    return webhook_app


IDLE_TIMEOUT: Final = 300.0
"""Seconds a kept-alive connection may wait for its next request: longer than any scrape
interval, so Prometheus keeps its connection, while a forgotten one is closed."""
SHUTDOWN_GRACE: Final = 5.0
"""Seconds requests in flight get to finish on stop; scrapes answer at once from the cache."""


async def start_server(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 for any free port) and return the runner and the port.

    `runner.cleanup()` stops it: no new connections, scrapes in flight answered from the cache,
    idle keep-alive connections closed.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=IDLE_TIMEOUT,
        shutdown_timeout=SHUTDOWN_GRACE,
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, host or None, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, site.port
