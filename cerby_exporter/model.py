"""The Cerby job, parsed tolerantly from `GET /jobs/{id}`.

Cerby documents every attribute as optional, its enums as open and its timestamps in four shapes,
so parsing keeps whatever it can and only rejects a body that is not a job envelope at all.
Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

STATUSES: Final = ("created", "started", "running", "retrying", "finished", "error", "unknown")
"""Every value of the `status` label, in lifecycle order; `unknown` stands for anything else."""

KNOWN_STATUSES: Final = frozenset(STATUSES) - {"unknown"}
TERMINAL_STATUSES: Final = frozenset({"finished", "error"})


class InvalidJob(ValueError):
    """The body is not a job envelope (bad JSON, or no `data` object)."""


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    error_type: str | None
    user_required: bool | None
    screenshot_url: str | None


@dataclass(frozen=True, slots=True)
class Job:
    """One job as Cerby last described it; `None` wherever Cerby gave nothing usable."""

    id: str
    raw_status: str | None
    workflow_type: str | None
    trigger: str | None
    provider: str | None
    account_id: str | None
    account_name: str | None
    creator_id: str | None
    creator_name: str | None
    can_retry: bool | None
    created_at: float | None
    updated_at: float | None
    error: ErrorDetails | None
    has_more_details: bool | None

    @property
    def status(self) -> str:
        """The status label value: the raw status if Cerby documents it, else `unknown`."""
        return normalize_status(self.raw_status)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def normalize_status(raw: str | None) -> str:
    return raw if raw in KNOWN_STATUSES else "unknown"


def parse_timestamp(value: object) -> float | None:
    """Unix seconds from any of Cerby's ISO 8601 shapes; a zone-less time is UTC.

    A time that is not a moment of years 1 to 9999 in UTC is no time at all: the state file
    writes every parsed time back as UTC (`job_document`), and it must always be able to.

    >>> parse_timestamp("2007-01-09T15:41:27.000Z")
    1168357287.0
    """
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC).timestamp()
    except OverflowError:  # "9999-12-31T23:59:59-05:00" is in year 10000 in UTC
        return None


def parse_job_body(body: bytes, job_id: str) -> Job:
    """Parse a 200 response body; raises `InvalidJob` when it is not a job envelope."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidJob(f"body is not JSON: {exc.__class__.__name__}") from None
    return parse_job(document, job_id)


def parse_job(document: object, job_id: str) -> Job:
    """Build a `Job` from a decoded envelope.

    The job is keyed by the ID we asked for, not `data.id`: that is the ID the operator configured
    and the one every label and alert will carry. `data.type` is ignored.
    """
    if not isinstance(document, dict):
        raise InvalidJob("body is not a JSON object")
    data = document.get("data")
    if not isinstance(data, dict):
        raise InvalidJob("body has no `data` object")
    attributes = _dict(data.get("attributes"))
    account = _dict(attributes.get("account"))
    creator = _dict(attributes.get("createdBy"))
    return Job(
        id=job_id,
        raw_status=_str(attributes.get("status")),
        workflow_type=_str(attributes.get("workflowType")),
        trigger=_str(attributes.get("trigger")),
        provider=_str(account.get("provider")),
        account_id=_str(account.get("id")),
        account_name=_str(account.get("name")),
        creator_id=_str(creator.get("id")),
        creator_name=_str(creator.get("name")),
        can_retry=_bool(attributes.get("canRetry")),
        created_at=parse_timestamp(attributes.get("createdAt")),
        updated_at=parse_timestamp(attributes.get("updatedAt")),
        error=_error_details(attributes.get("errorDetails")),
        has_more_details=_bool(attributes.get("hasMoreDetails")),
    )


def _error_details(value: object) -> ErrorDetails | None:
    """`None` for a missing, empty or all-null `errorDetails`: there is nothing to show."""
    details = _dict(value)
    parsed = ErrorDetails(
        error_type=_str(details.get("errorType")),
        user_required=_bool(details.get("userRequired")),
        screenshot_url=_str(details.get("screenshotUrl")),
    )
    if parsed == ErrorDetails(None, None, None):
        return None
    return parsed


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    """Interned: the same statuses, workflow types, providers and accounts recur across
    thousands of jobs, and each job keeps its own only as long as the job is kept."""
    return sys.intern(value) if isinstance(value, str) and value else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def job_document(job: Job) -> bytes:
    """The job as an API answer again, for the state file: `parse_job_body` reads it back.

    Only what the exporter keeps is written; a restart serves the same labels and values.
    """
    error = job.error
    attributes: dict[str, Any] = {
        "status": job.raw_status,
        "workflowType": job.workflow_type,
        "trigger": job.trigger,
        "account": {"id": job.account_id, "name": job.account_name, "provider": job.provider},
        "createdBy": {"id": job.creator_id, "name": job.creator_name},
        "canRetry": job.can_retry,
        "createdAt": _iso(job.created_at),
        "updatedAt": _iso(job.updated_at),
        "errorDetails": {}
        if error is None
        else {
            "errorType": error.error_type,
            "userRequired": error.user_required,
            "screenshotUrl": error.screenshot_url,
        },
        "hasMoreDetails": job.has_more_details,
    }
    document = {"data": {"id": job.id, "type": "job", "attributes": attributes}}
    return json.dumps(document, separators=(",", ":")).encode()


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
