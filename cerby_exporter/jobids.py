"""Job IDs: the only input that reaches a URL path, so only the bare UUID shape gets through.

Cerby has no list endpoint; operators name the jobs to watch on the command line and in a file
that may be edited while the exporter runs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

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


class JobIdSource:
    """The IDs to collect: fixed ones plus the file's, re-read whenever the file changes.

    A reload that fails (unreadable file, bad lines) is logged and keeps what still parses, so a
    typo made in production never empties the exporter.
    """

    def __init__(self, fixed: tuple[str, ...], path: Path | None, max_jobs: int) -> None:
        self._fixed = fixed
        self._path = path
        self._max_jobs = max_jobs
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._from_file: tuple[str, ...] = ()
        self._current = fixed

    def current(self) -> tuple[str, ...]:
        """The IDs now, after a cheap `stat` to notice an edited file."""
        if self._path is None:
            return self._current
        with self._lock:
            self._reload_if_changed(self._path)
            return self._current

    def _reload_if_changed(self, path: Path) -> None:
        try:
            info = os.stat(path)
        except OSError as exc:
            if self._stamp is not None:
                log.warning("job-ID file unreadable, keeping %d IDs: %s", len(self._current), exc)
                self._stamp = None
            return
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("job-ID file unreadable, keeping %d IDs: %s", len(self._current), exc)
            return
        parsed = parse_job_ids_file(text)
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
        if merged != self._current:
            log.info("job IDs reloaded from file: %d tracked", len(merged))
        self._from_file = parsed.ids
        self._current = merged
