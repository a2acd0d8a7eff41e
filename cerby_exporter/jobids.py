"""Job IDs: the only input that reaches a URL path, so only the bare UUID shape gets through.

Cerby has no list endpoint; operators name the jobs to watch on the command line and in a file
that may be edited while the exporter runs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cerby_exporter.watched import WatchedFile

log = logging.getLogger(__name__)

_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_SEPARATORS: Final = re.compile(r"[\s,]+")


def is_job_id(text: str) -> bool:
    """True for the 8-4-4-4-12 hex shape; any version, since Cerby's own examples are not v4."""
    return _UUID.fullmatch(text) is not None


def normalize_job_id(text: str) -> str:
    """Lower-case, so one job is one series whatever case the operator typed."""
    return text.lower()


def split_job_ids(text: str) -> list[str]:
    """Split a comma- or whitespace-separated list, dropping empty pieces."""
    return [piece for piece in _SEPARATORS.split(text) if piece]


@dataclass(frozen=True, slots=True)
class ParsedFile:
    ids: tuple[str, ...]
    bad_lines: tuple[tuple[int, str], ...]
    """(line number, text) of every line that is not a job ID."""


def parse_job_ids_file(text: str) -> ParsedFile:
    """One ID per line; `#` starts a comment; blank lines are ignored."""
    ids: list[str] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        if is_job_id(content):
            ids.append(normalize_job_id(content))
        else:
            bad.append((number, content))
    return ParsedFile(tuple(ids), tuple(bad))


def merge(*groups: Iterable[str]) -> tuple[str, ...]:
    """Concatenate, keeping the first occurrence of each ID and the operator's order."""
    return tuple(dict.fromkeys(job_id for group in groups for job_id in group))


@dataclass(frozen=True, slots=True)
class Learned:
    """A job the exporter heard of from Cerby's webhooks, not from its configuration."""

    learned_at: float
    last_heard_at: float


def retention_expired(
    learned: Mapping[str, Learned],
    terminal: Callable[[str], bool],
    now: float,
    retention: float,
) -> list[str]:
    """Learned jobs to forget: in a terminal state, and no event about them for `retention`.

    A job still in flight, or never fetched, is kept however old: its outcome is what matters.
    """
    return [
        job_id
        for job_id, seen in learned.items()
        if now - seen.last_heard_at > retention and terminal(job_id)
    ]


def cap_victim(
    learned: Mapping[str, Learned], configured: Collection[str], terminal: Callable[[str], bool]
) -> str | None:
    """The job to forget so a new one fits under the cap: the learned terminal job heard of
    longest ago. Configured jobs and jobs in flight are never chosen."""
    candidates = [
        (seen.last_heard_at, job_id)
        for job_id, seen in learned.items()
        if job_id not in configured and terminal(job_id)
    ]
    return min(candidates)[1] if candidates else None


class JobIdSource:
    """The IDs to collect: configured ones (flags, and the file, re-read whenever it changes),
    then the ones learned from webhooks.

    A reload that fails (unreadable file, bad lines) is logged and keeps what still parses, so a
    typo made in production never empties the exporter.
    """

    def __init__(
        self,
        fixed: tuple[str, ...],
        path: Path | None,
        max_jobs: int,
        recheck_seconds: float = 1.0,
    ) -> None:
        self._fixed = fixed
        self._recheck = recheck_seconds
        self._checked_at = -float("inf")
        self._file = WatchedFile(path) if path is not None else None
        self._max_jobs = max_jobs
        self._configured = fixed
        self._configured_set = frozenset(fixed)
        self._current = fixed
        self._unreadable = False
        self._learned: dict[str, Learned] = {}
        self._reloading: asyncio.Future[None] | None = None

    def current(self) -> tuple[str, ...]:
        """Every tracked ID: the configured ones as of the latest `reload()`, then the learned."""
        return self._current

    def configured(self) -> tuple[str, ...]:
        return self._configured

    def learned(self) -> Mapping[str, Learned]:
        return self._learned

    def counts(self) -> dict[str, int]:
        """Tracked jobs by source, for `cerby_tracked_jobs{source}`."""
        configured = len(self._configured)
        return {"configured": configured, "webhook": len(self._current) - configured}

    def room_for(self, job_id: str) -> bool:
        """Whether `job_id` is tracked already or one more job fits under the cap."""
        return (
            job_id in self._learned
            or job_id in self._configured_set
            or (len(self._current) < self._max_jobs)
        )

    def learn(self, job_id: str, heard_at: float, learned_at: float | None = None) -> None:
        """Track a job heard of (or note that it was heard of again); check `room_for` first."""
        seen = self._learned.get(job_id)
        first = seen.learned_at if seen is not None else heard_at
        self._learned[job_id] = Learned(learned_at if learned_at is not None else first, heard_at)
        if seen is None:
            self._recompute()

    def forget(self, job_ids: Iterable[str]) -> None:
        removed = [self._learned.pop(job_id, None) for job_id in job_ids]
        if any(seen is not None for seen in removed):
            self._recompute()

    def _recompute(self) -> None:
        self._configured_set = frozenset(self._configured)
        extra = (job_id for job_id in self._learned if job_id not in self._configured_set)
        self._current = merge(self._configured, extra)

    async def reload(self) -> None:
        """Notice an edited file: a `stat` (and a read when it changed), in a thread, at most
        once every `recheck_seconds`. A caller that comes while a read is under way waits for
        it: otherwise a scrape at start-up, overlapping the first read, would answer with none
        of the file's IDs."""
        if self._file is None:
            return
        reading = self._reloading
        if reading is None or reading.done():
            now = time.monotonic()
            if now - self._checked_at < self._recheck:
                return
            self._checked_at = now
            reading = self._reloading = asyncio.ensure_future(self._read_and_apply(self._file))
        await asyncio.shield(reading)

    async def _read_and_apply(self, file: WatchedFile) -> None:
        parsed = await asyncio.to_thread(self._read_if_changed, file)
        if parsed is not None:
            self._apply(parsed)

    def _read_if_changed(self, file: WatchedFile) -> ParsedFile | None:
        """Runs in a thread: reads and parses, changes nothing."""
        try:
            data = file.changed()
            if data is None:
                return None
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            if not self._unreadable:
                log.warning(
                    "job-ID file unreadable, keeping %d IDs: %s", len(self._configured), exc
                )
            self._unreadable = True
            return None
        self._unreadable = False
        return parse_job_ids_file(text)

    def _apply(self, parsed: ParsedFile) -> None:
        for number, content in parsed.bad_lines:
            log.warning("job-ID file line %d skipped: not a job ID: %.80r", number, content)
        merged = merge(self._fixed, parsed.ids)
        if len(merged) > self._max_jobs:
            log.warning(
                "job-ID file names %d jobs, over the cap of %d; tracking the first %d",
                len(merged),
                self._max_jobs,
                self._max_jobs,
            )
            merged = merged[: self._max_jobs]
        if merged != self._configured:
            log.info("job IDs reloaded from file: %d configured", len(merged))
        self._configured = merged
        self._recompute()
