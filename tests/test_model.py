"""The job model over Cerby's documented examples and every edge case the API notes list."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from cerby_exporter.model import (
    ErrorDetails,
    InvalidJob,
    Job,
    job_document,
    normalize_status,
    parse_job,
    parse_job_body,
    parse_timestamp,
)

JOB_ID = "3f0e1b2c-4d5e-6f70-8192-a3b4c5d6e7f8"

# In the shape of Cerby's first documented example: a finished job, microsecond timestamps with
# +00:00, an empty errorDetails, no payload, links and meta present.
FINISHED_EXAMPLE: dict[str, Any] = {
    "data": {
        "id": JOB_ID,
        "type": "job",
        "attributes": {
            "account": {
                "entity": "account",
                "id": "0a1b2c3d-0000-4000-8000-000000000001",
                "name": "Community Server",
                "provider": "discord_tenant",
            },
            "canRetry": False,
            "createdAt": "2024-08-29T19:31:21.563000+00:00",
            "updatedAt": "2024-08-29T19:33:02.120000+00:00",
            "createdBy": {"id": "0a1b2c3d-0000-4000-8000-000000000002", "name": "Riley Admin"},
            "errorDetails": {},
            "hasMoreDetails": False,
            "response": {},
            "status": "finished",
            "trigger": "manual",
            "workflowType": "proxy_account_roles_update",
            "workspacePolicyEnforcementId": None,
        },
    },
    "links": {"self": f"/api/v1/jobs/{JOB_ID}"},
    "meta": {},
}

# In the shape of the second: a created job, zone-less timestamps, errorDetails of three nulls,
# payload null, and no links or meta.
CREATED_EXAMPLE: dict[str, Any] = {
    "data": {
        "id": JOB_ID,
        "type": "job",
        "attributes": {
            "account": {
                "entity": "account",
                "id": "0a1b2c3d-0000-4000-8000-000000000003",
                "name": "Brand Feed",
                "provider": "twitter",
            },
            "canRetry": True,
            "createdAt": "2024-09-08T22:56:37",
            "updatedAt": "2024-09-08T22:56:37",
            "createdBy": {"id": "0a1b2c3d-0000-4000-8000-000000000004", "name": "Sam Owner"},
            "errorDetails": {"errorType": None, "screenshotUrl": None, "userRequired": None},
            "hasMoreDetails": False,
            "payload": None,
            "status": "created",
            "trigger": "workspace_policy",
            "workflowType": "setup_mfa",
            "workspacePolicyEnforcementId": "0a1b2c3d-0000-4000-8000-000000000005",
        },
    },
}


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_finished_example() -> None:
    job = parse_job_body(json.dumps(FINISHED_EXAMPLE).encode(), JOB_ID)
    assert job.status == "finished"
    assert job.is_terminal
    assert job.workflow_type == "proxy_account_roles_update"
    assert job.provider == "discord_tenant"
    assert job.account_name == "Community Server"
    assert job.account_id == "0a1b2c3d-0000-4000-8000-000000000001"
    assert job.trigger == "manual"
    assert job.can_retry is False
    assert job.created_at == pytest.approx(ts("2024-08-29T19:31:21.563"))
    assert job.updated_at == pytest.approx(ts("2024-08-29T19:33:02.120"))
    assert job.error is None
    assert job.creator_name == "Riley Admin"


def test_created_example() -> None:
    job = parse_job_body(json.dumps(CREATED_EXAMPLE).encode(), JOB_ID)
    assert job.status == "created"
    assert not job.is_terminal
    assert job.workflow_type == "setup_mfa"
    assert job.provider == "twitter"
    assert job.can_retry is True
    assert job.created_at == ts("2024-09-08T22:56:37")
    assert job.error is None  # three nulls are no details at all


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-09-08T22:56:37", ts("2024-09-08T22:56:37")),
        ("2024-08-29T19:31:21.563000+00:00", ts("2024-08-29T19:31:21.563")),
        ("2007-01-09T15:41:27.000Z", ts("2007-01-09T15:41:27")),
        ("2024-09-05T20:46:14.357000", ts("2024-09-05T20:46:14.357")),
        ("2024-09-05T22:46:14+02:00", ts("2024-09-05T20:46:14")),
        ("2024-09-05T20:46:14z", ts("2024-09-05T20:46:14")),
    ],
)
def test_every_documented_timestamp_shape(text: str, expected: float) -> None:
    assert parse_timestamp(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "yesterday",
        "2024-13-45T99:00:00",
        1725569174,
        [],
        "9999-12-31T23:59:59-05:00",  # year 10000 in UTC
        "0001-01-01T00:00:00+05:00",  # year 0 in UTC
    ],
)
def test_unreadable_timestamps_are_none(value: object) -> None:
    assert parse_timestamp(value) is None


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59+00:00", "0001-01-01T05:00:00+05:00"])
def test_the_extreme_timestamps_are_written_back_and_read_again(text: str) -> None:
    job = parse_job({"data": {"attributes": {"createdAt": text}}}, JOB_ID)
    assert job.created_at is not None
    assert parse_job_body(job_document(job), JOB_ID) == job


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("created", "created"),
        ("started", "started"),
        ("running", "running"),
        ("retrying", "retrying"),
        ("finished", "finished"),
        ("error", "error"),
        ("paused", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
        ("FINISHED", "unknown"),
    ],
)
def test_status_mapping(raw: str | None, expected: str) -> None:
    assert normalize_status(raw) == expected


def test_unknown_values_are_kept_raw() -> None:
    document = {
        "data": {
            "attributes": {
                "status": "paused",
                "workflowType": "something_new",
                "trigger": "api_v2",
                "account": {"provider": "brand_new_app"},
            }
        }
    }
    job = parse_job(document, JOB_ID)
    assert job.status == "unknown"
    assert job.raw_status == "paused"
    assert job.workflow_type == "something_new"
    assert job.trigger == "api_v2"
    assert job.provider == "brand_new_app"


def test_every_attribute_missing_or_null() -> None:
    job = parse_job({"data": {"attributes": None}}, JOB_ID)
    assert job.status == "unknown"
    assert (job.workflow_type, job.provider, job.trigger, job.can_retry) == (None,) * 4
    assert (job.created_at, job.updated_at, job.error, job.account_name) == (None,) * 4
    nulls = dict.fromkeys(CREATED_EXAMPLE["data"]["attributes"])
    job = parse_job({"data": {"attributes": nulls}}, JOB_ID)
    assert job.status == "unknown"
    assert job.can_retry is None


def test_wrongly_typed_attributes_are_dropped_not_fatal() -> None:
    document = {
        "data": {
            "attributes": {
                "status": 3,
                "canRetry": "yes",
                "account": "twitter",
                "createdBy": ["x"],
                "errorDetails": "boom",
                "workflowType": {"x": 1},
            }
        }
    }
    job = parse_job(document, JOB_ID)
    assert job.status == "unknown"
    assert job.can_retry is None
    assert job.provider is None
    assert job.error is None
    assert job.workflow_type is None


def test_error_details() -> None:
    document = {
        "data": {
            "attributes": {
                "status": "error",
                "errorDetails": {
                    "errorType": "login_failed",
                    "screenshotUrl": "https://example.invalid/s.png",
                    "userRequired": True,
                },
            }
        }
    }
    job = parse_job(document, JOB_ID)
    assert job.error == ErrorDetails("login_failed", True, "https://example.invalid/s.png")
    partial = parse_job({"data": {"attributes": {"errorDetails": {"userRequired": False}}}}, JOB_ID)
    assert partial.error == ErrorDetails(None, False, None)


def test_data_type_and_id_are_not_trusted() -> None:
    document = {"data": {"id": "another", "type": "not-a-job", "attributes": {"status": "error"}}}
    job = parse_job(document, JOB_ID)
    assert job.id == JOB_ID
    assert job.status == "error"


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"[]", b'"job"', b"{}", b'{"data": []}', b'{"data": null}', b"\xff\xfe"],
)
def test_bodies_that_are_not_jobs(body: bytes) -> None:
    with pytest.raises(InvalidJob):
        parse_job_body(body, JOB_ID)


def test_unknown_fields_are_ignored() -> None:
    document = json.loads(json.dumps(FINISHED_EXAMPLE))
    document["data"]["attributes"]["brandNewField"] = {"deep": [1, 2, 3]}
    document["included"] = [{"type": "account"}]
    assert parse_job(document, JOB_ID).status == "finished"


@pytest.mark.parametrize(
    "job",
    [
        parse_job(FINISHED_EXAMPLE, JOB_ID),
        parse_job(CREATED_EXAMPLE, JOB_ID),
        Job(
            JOB_ID, "error", "revoke_access", "user_deprovisioned", "discord_tenant", "acc-1",
            'Brand "X"', "user-1", "Dana Example", False, 1700000000.25, 1700000090.5,
            ErrorDetails("login_failed", True, "https://example.invalid/s.png"), True,
        ),
        Job(JOB_ID, "paused", *(None,) * 12),
        parse_job({"data": {"attributes": None}}, JOB_ID),
    ],
)  # fmt: skip
def test_a_job_written_for_the_state_file_reads_back_the_same(job: Job) -> None:
    assert parse_job_body(job_document(job), JOB_ID) == job
