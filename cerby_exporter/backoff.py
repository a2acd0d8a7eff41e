"""Back-off arithmetic: how long to wait after a 429 or a transient failure.

Pure functions plus one small gate (used on the event loop only), so that every rule here is
tested exhaustively without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 3600.0
"""A `Retry-After` further away than this is treated as this: an hour of silence is enough."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP-date.

    `None` when the header is absent or unreadable, so the caller falls back to its default.
    A date in the past means "now" (0 s); anything over an hour is capped.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; be lenient about a missing zone
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def retry_delay(attempt: int, base: float, cap: float, random: Callable[[], float]) -> float:
    """Full-jitter exponential back-off: uniform in [0, min(cap, base * 2**attempt)).

    `attempt` counts from 0 for the first retry. Jitter spreads the retries of many jobs that
    failed together, so a recovering Cerby is not hit by one synchronised wave.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap, base * (2.0**attempt))
    return ceiling * random()


def worth_retrying(now: float, delay: float, deadline: float, min_request_time: float) -> bool:
    """A retry is made only if, after the delay, a request still has time to complete."""
    return now + delay + min_request_time <= deadline


class RateLimitGate:
    """One back-off for the whole exporter: after a 429 no request goes out until it ends.

    Cerby documents no rate-limit headers and advises retrying in five minutes, so one 429 means
    every job waits, not just the one that got it.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until = 0.0

    def trip(self, seconds: float) -> bool:
        """Close the gate for `seconds`; True if it was open (the caller logs only then)."""
        now = self._clock()
        was_open = self._until <= now
        self._until = max(self._until, now + seconds)
        return was_open

    def closed(self) -> bool:
        return self._clock() < self._until

    @property
    def until(self) -> float:
        """Clock time the back-off ends; 0 when none was ever set."""
        return self._until
