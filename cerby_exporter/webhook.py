"""The webhook receiver: Cerby's signed events, the exporter's way of learning of every job.

Cerby has no endpoint that lists jobs; its webhooks carry each job's ID as it happens (every
policy rotation, every removal of a departed person's access). A delivery is verified on its raw
bytes before anything parses it, stored durably, and only then acknowledged: Cerby retries
anything but a 2xx for a day, so a crash before the answer loses nothing. Each answer is chosen
for what Cerby does with it:

    verified and stored                  2xx  accepted
    verified, event_id already stored    2xx  duplicate
    verified, no job in it               2xx  ignored      (another event type, a test delivery)
    no signature verifies                401  bad_signature     (dead-lettered: forged, mis-keyed)
    timestamp more than 300 s off        401  stale_timestamp
    only key IDs we do not have          503  unknown_key  (+ Retry-After: a rotation has begun)
    verified but not an envelope         400  malformed
    body over 1 MiB                      413  too_large
    cannot be stored now                 503  unavailable  (+ Retry-After)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cerby_exporter.cache import Entry, JobCache
from cerby_exporter.jobids import (
    JobIdSource,
    cap_victim,
    is_job_id,
    normalize_job_id,
    retention_expired,
)
from cerby_exporter.state import AsyncState, StateUnavailable

if TYPE_CHECKING:
    from cerby_exporter.signatures import KeysSource

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
"""As `app.WEBHOOK_MAX_BODY_BYTES`, which tells aiohttp; checked here on the declared length too."""
RESULTS: Final = (
    "accepted",
    "duplicate",
    "ignored",
    "bad_signature",
    "stale_timestamp",
    "unknown_key",
    "malformed",
    "too_large",
    "unavailable",
)
RETRY_AFTER_UNKNOWN_KEY: Final = 3600
"""Seconds Cerby is asked to wait when a delivery is signed only by keys not installed yet: the
most it honours. It tries six times in all, so the longest wait gives the most time to install
the new key before Cerby gives up."""
RETRY_AFTER_UNAVAILABLE: Final = 300
"""Seconds Cerby is asked to wait when the state file cannot take an event (locked, full)."""
EVENT_KEEP_SECONDS: Final = 48 * 3600.0
"""Event IDs are kept past Cerby's 24 h of retries, so every redelivery is known."""
SWEEP_SECONDS: Final = 60.0
SIGNATURE_HEADERS: Final = (
    "X-Cerby-Signature",
    "X-Cerby-Signature-Key-Id",
    "X-Cerby-Signature-Timestamp",
)


class Malformed(ValueError):
    """A verified body that is not an event envelope."""


@dataclass(frozen=True, slots=True)
class Event:
    """What the exporter keeps of an event envelope."""

    event_id: str
    event_type: str
    job_id: str | None
    application: str
    error_code: str


def parse_envelope(body: bytes) -> Event:
    """The envelope of a verified body; raises `Malformed` when it is not one.

    New fields may appear without a version bump, so only what is used is checked.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise Malformed("body is not JSON") from None
    if not isinstance(document, dict):
        raise Malformed("body is not a JSON object")
    event_id, event_type = document.get("event_id"), document.get("event_type")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 100:
        raise Malformed("no event_id")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 100:
        raise Malformed("no event_type")
    data = document.get("data")
    data = data if isinstance(data, dict) else {}
    job = data.get("automation_job_id")
    if job is not None and (not isinstance(job, str) or not is_job_id(job)):
        raise Malformed("data.automation_job_id is not a job ID")
    error = document.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    application = data.get("application")
    return Event(
        event_id=event_id,
        event_type=event_type,
        job_id=normalize_job_id(job) if job is not None else None,
        application=application[:100] if isinstance(application, str) else "",
        error_code=code[:100] if isinstance(code, str) else "",
    )


class WebhookMetrics:
    """The receiver's counters, for the exporter's registry. Yields (values illustrative)::

    # HELP cerby_webhook_requests_total Webhook deliveries received, by result.
    # TYPE cerby_webhook_requests_total counter
    cerby_webhook_requests_total{result="accepted"} 12.0
    cerby_webhook_requests_total{result="bad_signature"} 1.0
    ...
    # HELP cerby_automation_events_total Automation events from Cerby's webhooks, once each.
    # TYPE cerby_automation_events_total counter
    cerby_automation_events_total{event_type="automation.failed",application="tiktok",
                                  error_code="BadCredentials"} 1.0
    # HELP cerby_webhook_last_event_timestamp_seconds When the latest verified delivery came.
    # TYPE cerby_webhook_last_event_timestamp_seconds gauge
    cerby_webhook_last_event_timestamp_seconds 1.7646216e+09
    # HELP cerby_jobs_forgotten_total Learned jobs no longer tracked, by reason.
    # TYPE cerby_jobs_forgotten_total counter
    cerby_jobs_forgotten_total{reason="retention"} 0.0
    cerby_jobs_forgotten_total{reason="cap"} 0.0
    # HELP cerby_jobs_dropped_total Learned jobs not tracked: --max-jobs reached ...
    # TYPE cerby_jobs_dropped_total counter
    cerby_jobs_dropped_total 0.0
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter(dict.fromkeys(RESULTS, 0))
        self.events: Counter[tuple[str, str, str]] = Counter()
        self.last_event = 0.0
        self.forgotten: Counter[str] = Counter({"retention": 0, "cap": 0})
        self.dropped = 0

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "cerby_webhook_requests",
            "Webhook deliveries received, by result: accepted, duplicate, ignored, bad_signature, "
            "stale_timestamp, unknown_key, malformed, too_large, unavailable.",
            labels=["result"],
        )
        for result in RESULTS:
            requests.add_metric([result], self.requests[result])
        yield requests
        events = CounterMetricFamily(
            "cerby_automation_events",
            "Automation events from Cerby's webhooks, counted once per event_id (error_code "
            "empty for success events).",
            labels=["event_type", "application", "error_code"],
        )
        for labels, count in sorted(self.events.items()):
            events.add_metric(list(labels), count)
        yield events
        yield GaugeMetricFamily(
            "cerby_webhook_last_event_timestamp_seconds",
            "When the latest verified webhook delivery arrived, 0 if none ever did.",
            value=self.last_event,
        )
        forgotten = CounterMetricFamily(
            "cerby_jobs_forgotten",
            "Learned jobs no longer tracked, by reason: retention (terminal, no event for "
            "--job-retention), cap (made room under --max-jobs).",
            labels=["reason"],
        )
        for reason in ("retention", "cap"):
            forgotten.add_metric([reason], self.forgotten[reason])
        yield forgotten
        yield CounterMetricFamily(
            "cerby_jobs_dropped",
            "Learned jobs not tracked: --max-jobs was reached and no learned terminal job could "
            "be forgotten. Their events are still stored and acknowledged.",
            value=self.dropped,
        )


class Discovery:
    """Jobs learned from webhooks: tracked, fetched at once, kept across restarts, forgotten
    after `retention` in a terminal state without news, or to make room under the cap."""

    def __init__(
        self,
        source: JobIdSource,
        cache: JobCache,
        state: AsyncState,
        metrics: WebhookMetrics,
        *,
        retention: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._cache = cache
        self._state = state
        self._metrics = metrics
        self._retention = retention
        self._clock = clock
        self._dropping = False

    async def restore(self) -> None:
        """What the state file knew: learned jobs tracked again, fresh job data not refetched."""
        snapshot = await self._state.load()
        for job_id, learned in snapshot.learned.items():
            self._source.learn(job_id, learned.last_heard_at, learned.learned_at)
        for job_id, (job, fetched_at) in snapshot.jobs.items():
            self._cache.restore(job_id, job, fetched_at)
        self._metrics.last_event = max(self._metrics.last_event, snapshot.last_event)
        log.info(
            "state restored from %s: %d learned jobs, data of %d jobs",
            self._state.path,
            len(snapshot.learned),
            len(snapshot.jobs),
        )

    async def heard(self, job_id: str, now: float) -> None:
        """A stored event named `job_id`: track it, and fetch it now rather than at a scrape."""
        if not self._source.room_for(job_id):
            victim = cap_victim(self._source.learned(), self._source.configured(), self._terminal)
            if victim is None:
                await self._state.forget_jobs([job_id])  # stored as learned with its event
                self._metrics.dropped += 1
                if not self._dropping:
                    log.warning(
                        "--max-jobs reached and every learned job is still in flight: job %s "
                        "is not tracked (counted in cerby_jobs_dropped_total)",
                        job_id,
                    )
                self._dropping = True
                return
            await self.forget([victim], "cap")
        self._dropping = False
        self._source.learn(job_id, now)
        self._cache.fetch_soon(job_id)

    def _terminal(self, job_id: str) -> bool:
        return self._cache.terminal(job_id)

    async def forget(self, job_ids: list[str], reason: str) -> None:
        await self._state.forget_jobs(job_ids)
        configured = set(self._source.configured())
        self._source.forget(job_ids)
        for job_id in job_ids:
            if job_id not in configured:
                self._cache.forget(job_id)
        self._metrics.forgotten[reason] += len(job_ids)

    async def sweep(self) -> None:
        """Forget what retention says, and purge event IDs past Cerby's window of retries."""
        now = self._clock()
        expired = retention_expired(self._source.learned(), self._terminal, now, self._retention)
        if expired:
            await self.forget(expired, "retention")
            log.info("forgot %d learned jobs past --job-retention", len(expired))
        await self._state.purge_events(now - EVENT_KEEP_SECONDS)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except StateUnavailable as exc:
                log.warning("state sweep failed, trying again later: %s", exc)

    def save(self, job_id: str, entry: Entry) -> None:
        """The cache stored new data: write it to the state file, batched, without waiting."""
        if entry.job is None or entry.fetched_at is None:
            return
        try:
            self._state.keep_job(job_id, entry.job, entry.fetched_at)
        except StateUnavailable as exc:  # closed: the exporter is stopping
            log.warning("job data not written to the state file: %s", exc)


def _answer(status: int, result: str, retry_after: int | None = None) -> web.Response:
    headers = {hdrs.RETRY_AFTER: str(retry_after)} if retry_after is not None else None
    return web.json_response({"result": result}, status=status, headers=headers)


class Receiver:
    """POST handler for the webhook path."""

    def __init__(
        self,
        keys: KeysSource,
        state: AsyncState,
        discovery: Discovery,
        metrics: WebhookMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Imported here, not with the module: signatures loads cryptography, which only a
        # receiver needs; an exporter learning no jobs from webhooks does not carry it.
        from cerby_exporter.signatures import verify

        self._verify = verify
        self._keys = keys
        self._state = state
        self._discovery = discovery
        self._metrics = metrics
        self._clock = clock

    def results(self) -> dict[str, int]:
        """Deliveries so far by result, for the landing page."""
        return dict(self._metrics.requests)

    async def handle(self, request: web.Request) -> web.Response:
        result, response = await self._receive(request)
        self._metrics.requests[result] += 1
        return response

    async def _receive(self, request: web.Request) -> tuple[str, web.Response]:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return "too_large", _answer(413, "too_large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return "too_large", _answer(413, "too_large")
        now = self._clock()
        headers = {name: request.headers.getall(name, []) for name in SIGNATURE_HEADERS}
        verdict = self._verify(body, headers, self._keys.keys, now)
        if verdict.result == "unknown_key":
            return "unknown_key", _answer(503, "unknown_key", RETRY_AFTER_UNKNOWN_KEY)
        if verdict.result != "verified":
            return verdict.result, _answer(401, verdict.result)
        self._metrics.last_event = now
        try:
            event = parse_envelope(body)
        except Malformed as exc:
            log.warning("verified webhook delivery is not an event envelope: %s", exc)
            return "malformed", _answer(400, "malformed")
        if event.job_id is None:
            return "ignored", _answer(200, "ignored")
        try:
            stored = await self._state.record_event(
                event.event_id, event.job_id, event.event_type, now
            )
        except StateUnavailable as exc:
            log.warning("webhook event not stored, Cerby will retry: %s", exc)
            return "unavailable", _answer(503, "unavailable", RETRY_AFTER_UNAVAILABLE)
        if not stored:
            return "duplicate", _answer(200, "duplicate")
        self._metrics.events[(event.event_type, event.application, event.error_code)] += 1
        await self._discovery.heard(event.job_id, now)
        return "accepted", _answer(200, "accepted")
