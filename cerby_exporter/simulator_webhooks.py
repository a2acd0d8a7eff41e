"""Cerby's webhooks as the simulated workspace sends them: envelopes, signatures, delivery.

Cerby delivers at least once, in no guaranteed order, and retries by the receiver's answer
(cerby-api.md, "Webhooks"). The sender does all of that on purpose, so a receiver meets here what
it will meet in production: the same event twice, events out of order, its own 503s honoured, and
now and then a copy whose signature does not verify, sent just before the genuine one, which a
receiver must reject without taking the event as seen.

Time runs faster than at Cerby: `WebhookDelivery.retry_base` stands for Cerby's first backoff of a
minute, and every other delay scales with it: the 4x schedule, its 6-hour cap, the one-hour clamp
on `Retry-After` (whose value is read in Cerby's seconds and scaled too) and the 24-hour cutoff.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cerby_exporter.signatures import sign

log = logging.getLogger(__name__)

Attributes = dict[str, Any]
Envelope = dict[str, Any]

TERMINAL: Final = ("finished", "error")
MAX_ATTEMPTS: Final = 6
RETRY_STATUSES: Final = (408, 429, 503)
"""Retried honouring `Retry-After`; other 5xx are retried on the plain schedule."""

ERROR_CODES: Final = (
    "NotEnoughSeats",
    "SubscriptionDeactivated",
    "UnderpermissionedAccount",
    "InvalidBusinessId",
    "BadCredentials",
    "EmptyPasswordError",
    "AccountVaultError",
    "EmailNotProvidedError",
    "InvalidEmail",
    "PhoneNotProvidedError",
    "PhoneNotManagedError",
    "GeneralMFANotManagedError",
    "MFANotManagedError",
    "MFAAlreadyEnable",
    "OtherMFAMethodEnabledError",
    "VerificationMethodsNotManagedError",
    "SecureDeviceNotFoundInStorage",
)
"""The documented `error.code` values of `automation.failed`."""

_CODE_BY_WORKFLOW: Final = {
    "password_rotation": "BadCredentials",
    "setup_mfa": "MFANotManagedError",
    "disable_mfa": "GeneralMFANotManagedError",
    "healthcheck_mfa": "OtherMFAMethodEnabledError",
    "email_swap_in": "EmailNotProvidedError",
    "phone_swap_in": "PhoneNotProvidedError",
    "get_business": "InvalidBusinessId",
    "get_native_partner_business": "InvalidBusinessId",
    "provide_access": "NotEnoughSeats",
    "provide_native_partner_access": "NotEnoughSeats",
    "update_access": "UnderpermissionedAccount",
    "revoke_access": "UnderpermissionedAccount",
    "revoke_native_partner_access": "UnderpermissionedAccount",
}
_SUCCESS_EVENTS: Final = {
    "password_rotation": "automation.password.rotated",
    "setup_mfa": "automation.mfa.enabled",
    "provide_access": "automation.users.provisioned",
    "provide_native_partner_access": "automation.users.provisioned",
    "update_access": "automation.users.role_updated",
    "proxy_account_roles_update": "automation.users.role_updated",
    "revoke_access": "automation.users.deprovisioned",
    "revoke_native_partner_access": "automation.users.deprovisioned",
}
"""The specific event that fires beside `automation.succeeded`, for the workflows that have one."""
_FAILURE_EVENTS: Final = {
    "password_rotation": "account.credentials.rotation_failed",
    "setup_mfa": "account.mfa.setup_failed",
}
_ROLLUPS: Final = (
    "automation.users.provisioned",
    "automation.users.deprovisioned",
    "automation.users.role_updated",
)
LINK_BASE: Final = "https://demo.cerby.invalid/automations"


def failure_code(workflow: object) -> str:
    """A documented code that fits the workflow, for jobs whose own error type is not one."""
    return _CODE_BY_WORKFLOW.get(str(workflow), "BadCredentials")


def rfc3339_ms(timestamp: float) -> str:
    """As Cerby writes `occurred_at` and the signature timestamp."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def uuid7(timestamp: float, rand: random.Random) -> str:
    """A UUIDv7: milliseconds first, so IDs sort by time, then random bits."""
    value = (int(timestamp * 1000) & (1 << 48) - 1) << 80 | rand.getrandbits(80)
    value = value & ~(0xF << 76) | 0x7 << 76
    value = value & ~(0x3 << 62) | 0x2 << 62
    return str(uuid.UUID(int=value))


def random_uuid4(rand: random.Random) -> str:
    return str(uuid.UUID(int=rand.getrandbits(128), version=4))


@dataclass
class WebhookDelivery:
    """Where and how the simulated workspace delivers its webhooks."""

    url: str
    key_id: str
    private_key: Ed25519PrivateKey | bytes
    """An `Ed25519PrivateKey` for ed25519, the secret for hmac-sha256."""
    algorithm: str = "ed25519"
    timestamp_form: str = "header"
    """What the signed `<timestamp_ms>` is: the header's text ("header") or Unix ms ("millis")."""
    new_job_every: float | None = None
    """Seconds between jobs the workspace starts on its own; None for none."""
    failure_share: float = 0.25
    """Of those new jobs, how many end in error."""
    account_share: float = 0.25
    """Of those new jobs, how many run on a new account, announced by `account.created`."""
    redeliver_share: float = 0.1
    bad_signature_share: float = 0.05
    shuffle: int = 3
    """Events sent in a random order within windows of this many; 1 keeps the order."""
    seed: int = 0
    retry_base: float = 1.0
    """Stands for Cerby's one-minute first backoff; every delay scales with it."""
    timeout: float = 10.0
    tls_verify: ssl.SSLContext | bool = True
    """For an https `url`: a context trusting the receiver's certificate, or False."""
    watch_every: float = 1.0
    """How often the jobs are looked at for ones that just ended."""


class JobSource(Protocol):
    """What the feed needs of the workspace."""

    workspace_id: str

    def statuses(self) -> dict[str, Any]: ...

    def job_attributes(self, job_id: str) -> Attributes | None: ...

    def spawn_job(
        self, rand: random.Random, *, duration: float, fails: bool, new_account: bool
    ) -> tuple[str, Attributes]: ...


class EventFactory:
    """Envelopes as cerby-api.md documents them."""

    def __init__(self, workspace_id: str, rand: random.Random) -> None:
        self.workspace_id = workspace_id
        self._random = rand

    def envelope(
        self, event_type: str, data: dict[str, Any], error: dict[str, Any] | None = None
    ) -> Envelope:
        now = time.time()
        envelope: Envelope = {
            "envelope_version": "1.0",
            "event_id": uuid7(now, self._random),
            "event_type": event_type,
            "occurred_at": rfc3339_ms(now),
            "workspace_id": self.workspace_id,
            "data": data,
        }
        if error is not None:
            envelope["error"] = error
        envelope["trace_id"] = None
        envelope["correlation_id"] = None
        return envelope

    def for_job(self, job_id: str, attributes: Attributes) -> list[Envelope]:
        """The catch-all event of a job that ended, and its specific one if its workflow has one;
        none for a job still going."""
        status = attributes.get("status")
        if status not in TERMINAL:
            return []
        workflow = attributes.get("workflowType")
        account = attributes.get("account") or {}
        data: dict[str, Any] = {
            "automation_job_id": job_id,
            "application": account.get("provider"),
            "account_id": account.get("id"),
            "automation_link": f"{LINK_BASE}/{job_id}",
            "action": workflow,
        }
        if status == "finished":
            events = [self.envelope("automation.succeeded", data)]
            specific = _SUCCESS_EVENTS.get(str(workflow))
            if specific is not None:
                extra = {"child_count": None, "child_failure_count": None}
                events.append(self.envelope(specific, {**data, **extra}))
            return events
        details = attributes.get("errorDetails") or {}
        error_type = details.get("errorType")
        code = error_type if error_type in ERROR_CODES else failure_code(workflow)
        person = bool(details.get("userRequired"))
        error = {
            "code": code,
            "message": f"The {workflow} automation did not complete ({code}).",
            "user_action": "Check the account in Cerby and retry." if person else "None needed.",
        }
        failed = {**data, "remediation": f"Resolve {code} for this account, then retry the job."}
        events = [self.envelope("automation.failed", failed, error)]
        specific = _FAILURE_EVENTS.get(str(workflow))
        if specific is not None:
            events.append(self.envelope(specific, data, error))
        return events

    def account_created(self, account: dict[str, Any]) -> Envelope:
        data = {
            "account_id": account.get("id"),
            "application": account.get("provider"),
            "account_name": account.get("name"),
        }
        return self.envelope("account.created", data)


@dataclass(frozen=True)
class _Attempt:
    event_id: str
    body: bytes
    delivery_id: str
    sequence: int
    first_try: float
    number: int = 1
    redelivery: bool = False


COUNTS: Final = (
    "events",
    "sent",
    "delivered",
    "redelivered",
    "retried",
    "dead_lettered",
    "gave_up",
    "bad_signature",
    "out_of_order",
)
"""The sender's counts: events queued; genuinely signed POSTs, retries and redeliveries included;
events answered 2xx; redeliveries sent; retries scheduled; events dead-lettered on a 4xx; events
given up after the last attempt; forged copies sent (their answers are kept apart, never
retried); events sent after one queued later."""


class WebhookSender:
    """Delivers events to one receiver as Cerby does, on the simulator's loop.

    One attempt at a time; retries and redeliveries wait in tasks of their own, then queue again.
    """

    def __init__(self, delivery: WebhookDelivery) -> None:
        self._delivery = delivery
        self._random = random.Random(f"{delivery.seed}:sender")
        self._queue: asyncio.Queue[_Attempt] = asyncio.Queue()
        self._waiting: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._sequence = 0
        self._highest_sent = -1
        self._open = 0
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNTS, 0))
        self.answers: Counter[str] = Counter()
        self.bad_signature_answers: Counter[str] = Counter()

    def start(self) -> None:
        """On the loop it is to run on."""
        delivery = self._delivery
        self._client = httpx.AsyncClient(
            timeout=delivery.timeout, verify=delivery.tls_verify, trust_env=False
        )
        self._task = _watched_task(self._run(), "cerby-simulator-webhooks")

    async def close(self) -> None:
        """Drops what is still undelivered."""
        tasks = [*self._waiting, *([self._task] if self._task is not None else [])]
        self._task = None
        await _cancel(tasks)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def submit(self, event: Envelope) -> None:
        """Queue one event; its body is serialised now, once, so every delivery sends the same
        bytes."""
        attempt = _Attempt(
            event_id=str(event["event_id"]),
            body=json.dumps(event).encode(),
            delivery_id=random_uuid4(self._random),
            sequence=self._sequence,
            first_try=time.monotonic(),
        )
        self._sequence += 1
        self._open += 1
        self.counts["events"] += 1
        self._queue.put_nowait(attempt)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "pending": self._open,
            "answers": dict(self.answers),
            "bad_signature_answers": dict(self.bad_signature_answers),
        }

    async def _run(self) -> None:
        window = max(1, self._delivery.shuffle)
        while True:
            batch = [await self._queue.get()]
            while len(batch) < window and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._random.shuffle(batch)
            for attempt in batch:
                await self._send(attempt)

    async def _send(self, attempt: _Attempt) -> None:
        delivery = self._delivery
        first = attempt.number == 1 and not attempt.redelivery
        if first:
            if attempt.sequence < self._highest_sent:
                self.counts["out_of_order"] += 1
            self._highest_sent = max(self._highest_sent, attempt.sequence)
            if self._random.random() < delivery.bad_signature_share:
                self.counts["bad_signature"] += 1
                answer, _ = await self._post(attempt, forged=True)
                self.bad_signature_answers[answer] += 1
        self.counts["sent"] += 1
        if attempt.redelivery:
            self.counts["redelivered"] += 1
        answer, retry_after = await self._post(attempt, forged=False)
        self.answers[answer] += 1
        status = int(answer) if answer.isdigit() else None
        if status is not None and 200 <= status < 300:
            if not attempt.redelivery:
                self.counts["delivered"] += 1
                if (
                    attempt.number < MAX_ATTEMPTS
                    and self._random.random() < delivery.redeliver_share
                ):
                    again = replace(attempt, number=attempt.number + 1, redelivery=True)
                    self._later(self._random.uniform(0, delivery.retry_base), again)
                    return
            self._open -= 1
        elif status in RETRY_STATUSES:
            self._retry(attempt, retry_after_delay(retry_after, delivery.retry_base))
        elif status is None or status >= 500:
            self._retry(attempt, None)
        else:
            self.counts["dead_lettered"] += 1
            self._open -= 1

    def _retry(self, attempt: _Attempt, delay: float | None) -> None:
        base = self._delivery.retry_base
        if delay is None:
            delay = min(base * 4 ** (attempt.number - 1), 360 * base)
        elapsed = time.monotonic() - attempt.first_try
        if attempt.number >= MAX_ATTEMPTS or elapsed + delay > 1440 * base:
            self.counts["gave_up"] += 1
            self._open -= 1
            return
        self.counts["retried"] += 1
        self._later(delay, replace(attempt, number=attempt.number + 1))

    def _later(self, delay: float, attempt: _Attempt) -> None:
        async def wait() -> None:
            await asyncio.sleep(delay)
            self._queue.put_nowait(attempt)

        task = _watched_task(wait(), "a delayed delivery")
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _post(self, attempt: _Attempt, *, forged: bool) -> tuple[str, str | None]:
        """The answer's status as text, or "timeout" or "error"; and its `Retry-After`."""
        delivery = self._delivery
        headers = sign(
            attempt.body,
            delivery.key_id,
            delivery.private_key,
            delivery.algorithm,
            time.time(),
            form=delivery.timestamp_form,
        )
        if forged:
            headers["X-Cerby-Signature"] = _flip_one_byte(
                headers["X-Cerby-Signature"], self._random
            )
        headers.update(
            {
                "Content-Type": "application/json",
                "X-Cerby-Delivery": attempt.delivery_id,
                "X-Cerby-Attempt": str(attempt.number),
                "Idempotency-Key": attempt.delivery_id,
            }
        )
        assert self._client is not None
        try:
            response = await self._client.post(delivery.url, content=attempt.body, headers=headers)
        except httpx.TimeoutException:
            return "timeout", None
        except httpx.HTTPError:
            return "error", None
        return str(response.status_code), response.headers.get("Retry-After")


def _watched_task(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task that logs the error it stops on, if it does: nothing else waits for it."""

    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("simulated webhooks: %s stopped", name, exc_info=exc)

    task = asyncio.get_running_loop().create_task(work, name=name)
    task.add_done_callback(report)
    return task


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)


def _flip_one_byte(header: str, rand: random.Random) -> str:
    """`<algo>=<base64url>` with one byte of the signature changed."""
    algorithm, _, encoded = header.partition("=")
    signature = bytearray(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    signature[rand.randrange(len(signature))] ^= 0x01
    return f"{algorithm}={base64.urlsafe_b64encode(bytes(signature)).decode().rstrip('=')}"


def retry_after_delay(value: str | None, base: float) -> float | None:
    """`Retry-After` in Cerby's seconds, clamped to its hour, in the simulator's time; None when
    absent or unreadable, for the plain schedule."""
    if value is None:
        return None
    try:
        seconds = float(int(value.strip()))
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), 3600.0) * base / 60


class WebhookFeed:
    """The workspace's events, delivered: jobs that end, jobs that start on their own, new
    accounts. The first look reports every job that has already ended, as if Cerby's deliveries
    had waited for the receiver to exist."""

    def __init__(self, source: JobSource, delivery: WebhookDelivery) -> None:
        self._source = source
        self._delivery = delivery
        self._random = random.Random(f"{delivery.seed}:feed")
        self._events = EventFactory(source.workspace_id, self._random)
        self.sender = WebhookSender(delivery)
        self._seen: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """On the loop it is to run on."""
        self.sender.start()
        self._tasks.append(_watched_task(self._watch(), "cerby-simulator-job-watch"))
        if self._delivery.new_job_every is not None:
            spawn = self._spawn(self._delivery.new_job_every)
            self._tasks.append(_watched_task(spawn, "cerby-simulator-new-jobs"))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        await _cancel(tasks)
        await self.sender.close()

    def look(self) -> None:
        """Send the events of every job whose status became terminal since the last look."""
        statuses = self._source.statuses()
        for job_id, status in statuses.items():
            if job_id in self._seen and self._seen[job_id] == status:
                continue
            self._seen[job_id] = status
            if status in TERMINAL:
                self.emit(job_id)
        for gone in self._seen.keys() - statuses.keys():
            del self._seen[gone]

    def emit(self, job_id: str | None) -> list[str]:
        """Send a job's events as it stands now (none while it runs), or without a job an
        `account.created`; the event IDs. KeyError for a job the workspace does not have."""
        if job_id is None:
            account = {
                "id": random_uuid4(self._random),
                "name": "Acme Signup",
                "provider": "twitter",
            }
            events = [self._events.account_created(account)]
        else:
            attributes = self._source.job_attributes(job_id)
            if attributes is None:
                raise KeyError(job_id)
            events = self._events.for_job(job_id, attributes)
        for event in events:
            self.sender.submit(event)
        return [str(event["event_id"]) for event in events]

    def stats(self) -> dict[str, Any]:
        return self.sender.stats()

    async def _watch(self) -> None:
        while True:
            self.look()
            await asyncio.sleep(self._delivery.watch_every)

    async def _spawn(self, every: float) -> None:
        delivery = self._delivery
        while True:
            await asyncio.sleep(every)
            new_account = self._random.random() < delivery.account_share
            _, attributes = self._source.spawn_job(
                self._random,
                duration=every,
                fails=self._random.random() < delivery.failure_share,
                new_account=new_account,
            )
            if new_account:
                self.sender.submit(self._events.account_created(attributes["account"]))


__all__ = [
    "ERROR_CODES",
    "EventFactory",
    "WebhookDelivery",
    "WebhookFeed",
    "WebhookSender",
    "failure_code",
    "retry_after_delay",
    "uuid7",
]
