"""Back-off arithmetic, exhaustively and without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from cerby_exporter.backoff import (
    MAX_RETRY_AFTER,
    RateLimitGate,
    parse_retry_after,
    retry_delay,
    worth_retrying,
)

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC).timestamp()


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("999999", MAX_RETRY_AFTER),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        (http_date(90), 90.0),
        (http_date(-30), 0.0),
        (http_date(7200), MAX_RETRY_AFTER),
        ("Mon, 24 Nov 2026 12:01:00", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


@pytest.mark.parametrize("attempt", range(8))
def test_retry_delay_stays_within_full_jitter_bounds(attempt: int) -> None:
    ceiling = min(4.0, 0.25 * 2**attempt)
    assert retry_delay(attempt, 0.25, 4.0, lambda: 0.0) == 0.0
    assert retry_delay(attempt, 0.25, 4.0, lambda: 0.5) == pytest.approx(ceiling / 2)
    assert retry_delay(attempt, 0.25, 4.0, lambda: 0.999) < ceiling


def test_retry_delay_grows_then_caps() -> None:
    delays = [retry_delay(n, 0.25, 4.0, lambda: 1.0) for n in range(7)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_retry_delay_rejects_negative_attempts() -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay(-1, 0.25, 4.0, lambda: 0.5)


@pytest.mark.parametrize(
    ("now", "delay", "deadline", "expected"),
    [(0.0, 1.0, 5.0, True), (0.0, 1.0, 2.0, True), (0.0, 1.5, 2.0, False), (4.0, 0.0, 4.5, False)],
)
def test_worth_retrying(now: float, delay: float, deadline: float, expected: bool) -> None:
    assert worth_retrying(now, delay, deadline, min_request_time=1.0) is expected


def test_gate_closes_for_the_given_time_and_reports_the_first_trip() -> None:
    now = [1000.0]
    gate = RateLimitGate(lambda: now[0])
    assert not gate.closed()
    assert gate.until == 0.0
    assert gate.trip(300) is True
    assert gate.closed()
    assert gate.until == 1300.0
    assert gate.trip(10) is False  # already closed: not a new event, and it never shortens
    assert gate.until == 1300.0
    now[0] = 1299.9
    assert gate.closed()
    now[0] = 1300.0
    assert not gate.closed()
    assert gate.trip(5) is True
    assert gate.until == 1305.0
