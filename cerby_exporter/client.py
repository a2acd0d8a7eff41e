"""The Cerby API client: one pooled httpx client, every failure classified, retries bounded.

Classification is by HTTP status alone: Cerby's error bodies disagree with each other, so they are
diagnostics at most. The key travels only in the `X-API-Key` header of requests to the configured
host; redirects are never followed, so it cannot be carried anywhere else.

httpx's requests go out through aiohttp's client (the `httpx-aiohttp` transport): the server
already runs on aiohttp, and its connection pool spends a fraction of the CPU per request that
httpcore's asyncio pool does (docs/performance.md, "Summary").
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from httpx_aiohttp import AiohttpTransport

from cerby_exporter import __version__
from cerby_exporter.backoff import (
    RateLimitGate,
    parse_retry_after,
    retry_delay,
    worth_retrying,
)
from cerby_exporter.metrics import ExporterMetrics
from cerby_exporter.model import InvalidJob, Job, parse_job_body
from cerby_exporter.watched import WatchedFile

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
TRANSIENT: Final = frozenset({"server_error", "timeout", "transport"})
RETRY_BASE_SECONDS: Final = 0.25
RETRY_CAP_SECONDS: Final = 4.0
NIL_JOB_ID: Final = "00000000-0000-0000-0000-000000000000"


class FetchError(Exception):
    """A fetch that produced no job; `reason` is one of `metrics.FETCH_ERROR_REASONS`."""

    def __init__(self, reason: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status


class BackedOff(Exception):
    """No request was sent: the exporter is inside a rate-limit back-off."""


def classify_status(code: int) -> str | None:
    """The failure reason for an HTTP status, or `None` for a success."""
    if 200 <= code < 300:
        return None
    if code == 404:
        return "not_found"
    if code in (401, 403):
        return "unauthorized"
    if code == 429:
        return "rate_limited"
    if code >= 500:
        return "server_error"
    return "invalid_response"  # a redirect or another 4xx: nothing we can use or retry


def timed_out(exc: Exception) -> bool:
    """Did the request fail for want of time, rather than on a broken connection?

    httpx-aiohttp raises `httpx.ConnectTimeout` for every aiohttp connection error, a reset or a
    server that hung up included; the aiohttp error it chains says which it was.
    """
    if not isinstance(exc, httpx.TimeoutException):
        return False
    cause = exc.__cause__
    return cause is None or isinstance(cause, TimeoutError)


def transport_failure(exc: Exception) -> str:
    """The name of what broke, for the log: aiohttp's own error when httpx wraps one."""
    cause = exc.__cause__
    return type(cause if isinstance(cause, Exception) else exc).__name__


def key_accepted(code: int) -> bool:
    """Did this answer come from a reachable Cerby that took our key?"""
    return code < 500 and code not in (401, 403)


class ApiKey:
    """The key, from the environment or from a file re-read when it changes.

    Cerby keys expire; writing a new one to the file takes effect without a restart. Each new key
    is handed to `on_new_key` (the log redactor) before it is ever used. The file is looked at
    at most once every `recheck_seconds`, in a thread.
    """

    def __init__(
        self,
        fixed: str | None,
        path: Path | None,
        on_new_key: Callable[[str], None],
        recheck_seconds: float = 1.0,
    ) -> None:
        self._file = WatchedFile(path) if path is not None else None
        self._on_new_key = on_new_key
        self._recheck = recheck_seconds
        self._lock = asyncio.Lock()
        self._value = ""
        self._checked_at = -float("inf")
        if fixed:
            on_new_key(fixed)
            self._value = fixed

    async def get(self) -> str:
        if self._file is None or time.monotonic() - self._checked_at < self._recheck:
            return self._value
        async with self._lock:
            # Stamped after the reload, not before: a caller that saw the stamp fresh must also
            # see the key it stands for (at start, an empty one would go out and earn a 401).
            if time.monotonic() - self._checked_at >= self._recheck:
                await asyncio.to_thread(self._reload, self._file)
                self._checked_at = time.monotonic()
            return self._value

    def _reload(self, file: WatchedFile) -> None:
        try:
            data = file.changed()
            if data is None:
                return
            key = data.decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("API key file unreadable, keeping the current key: %s", type(exc).__name__)
            return
        if key and key != self._value:
            self._on_new_key(key)
            if self._value:
                log.info("API key file changed: new key in use")
            self._value = key


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one fetch learned about Cerby itself, beyond the job."""

    requests: int
    key_accepted: bool | None
    """True if any answer came from Cerby with our key accepted, None if no answer came."""


class CerbyClient:
    def __init__(
        self,
        base_url: str,
        key: ApiKey,
        metrics: ExporterMetrics,
        gate: RateLimitGate,
        *,
        request_timeout: float,
        max_connections: int,
        retries: int,
        rate_limit_backoff: float,
        ca_bundle: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._key = key
        self._metrics = metrics
        self._gate = gate
        self._timeout = request_timeout
        self._retries = retries
        self._rate_limit_backoff = rate_limit_backoff
        self._wall = wall_clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._rand = rand
        self._key_rejected = False
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        if transport is None:
            cafile = str(ca_bundle) if ca_bundle is not None else None
            verify = ssl.create_default_context(cafile=cafile)
            transport = AiohttpTransport(verify=verify, limits=limits, trust_env=False)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout),
            limits=limits,
            follow_redirects=False,
            transport=transport,
            trust_env=False,
            headers={"Accept": "application/json", "User-Agent": f"cerby-exporter/{__version__}"},
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def fetch_job(self, job_id: str, deadline: float) -> tuple[Job | FetchError, Attempt]:
        """Fetch one job, retrying transient failures while the (monotonic) deadline allows.

        Raises `BackedOff` if the rate-limit gate is closed before the first request.
        """
        requests = 0
        accepted: bool | None = None
        attempt = 0
        last: FetchError | None = None
        while True:
            if self._gate.closed():
                if last is None:
                    raise BackedOff
                # Another job's 429 closed the gate between our retries: the failure this job
                # really had is the one counted, and no further request goes out.
                return last, Attempt(requests, accepted)
            requests += 1
            result, code = await self._request(job_id)
            if code is not None:
                accepted = (accepted or False) or key_accepted(code)
                self._note_key(code)
            if isinstance(result, Job) or result.reason not in TRANSIENT:
                return result, Attempt(requests, accepted)
            if attempt >= self._retries:
                return result, Attempt(requests, accepted)
            delay = retry_delay(attempt, RETRY_BASE_SECONDS, RETRY_CAP_SECONDS, self._rand)
            if not worth_retrying(self._monotonic(), delay, deadline, min(1.0, self._timeout)):
                return result, Attempt(requests, accepted)
            last = result
            await self._sleep(delay)
            attempt += 1

    async def _request(self, job_id: str) -> tuple[Job | FetchError, int | None]:
        """One GET; the job or the classified failure, and the status code if one came."""
        url = f"{self._base}/jobs/{job_id}"
        started = self._monotonic()
        try:
            key = await self._key.get()
            async with self._http.stream("GET", url, headers={"X-API-Key": key}) as response:
                body, too_big = await self._read_capped(response, started)
        except (httpx.TransportError, httpx.StreamError) as exc:
            self._metrics.observe_failed_request(self._monotonic() - started)
            if timed_out(exc):
                return FetchError("timeout", f"no answer within {self._timeout:g}s"), None
            return FetchError("transport", transport_failure(exc)), None
        code = response.status_code
        self._metrics.observe_response(code, self._monotonic() - started)
        reason = classify_status(code)
        if reason == "rate_limited":
            self._rate_limited(response)
        if reason is not None:
            return FetchError(reason, f"HTTP {code}", code), code
        if too_big:
            return FetchError("invalid_response", f"body over {MAX_BODY_BYTES} bytes", code), code
        content_type = response.headers.get("content-type", "")
        if "json" not in content_type.lower():
            return FetchError("invalid_response", f"content type {content_type[:60]!r}", code), code
        try:
            return parse_job_body(body, job_id), code
        except InvalidJob as exc:
            return FetchError("invalid_response", str(exc), code), code

    async def _read_capped(self, response: httpx.Response, started: float) -> tuple[bytes, bool]:
        """Read at most 1 MiB, within the request timeout even if the server trickles."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return b"", True
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return b"", True
            chunks.append(chunk)
            if self._monotonic() - started > self._timeout:
                raise httpx.ReadTimeout("body not read within the request timeout")
        return b"".join(chunks), False

    def _rate_limited(self, response: httpx.Response) -> None:
        wait = parse_retry_after(response.headers.get("retry-after"), self._wall())
        seconds = self._rate_limit_backoff if wait is None else wait
        if self._gate.trip(seconds):
            log.warning(
                "Cerby is rate limiting (HTTP 429): no API calls for %gs, serving cached data",
                seconds,
            )

    def _note_key(self, code: int) -> None:
        """One line when Cerby starts refusing the key and one when it takes a key again,
        however many jobs and scrapes see it in between. A 5xx says nothing about the key."""
        rejected = code in (401, 403)
        if not rejected and not key_accepted(code):
            return
        changed = rejected != self._key_rejected
        self._key_rejected = rejected
        if changed and rejected:
            log.error(
                "Cerby refuses the API key (HTTP %d): expired, deleted or without the scope "
                "read:automations; cerby_up is 0 and cached data is served until a valid key "
                "is in place (a new key written to the key file is used without a restart)",
                code,
            )
        elif changed:
            log.info("Cerby accepts the API key again")

    async def check_key(self, deadline: float) -> bool | None:
        """Ask for a job that cannot exist: a 404 proves Cerby is reachable and takes the key."""
        try:
            _, attempt = await self.fetch_job(NIL_JOB_ID, deadline)
        except BackedOff:
            return None
        return bool(attempt.key_accepted)
