"""glibc's allocator, set up so that the exporter's resident memory stays flat.

A scrape-serving exporter is many threads (one per connection, plus the fetch pool) sharing
buffers that one thread allocates and another frees. Three glibc habits make such a process
creep, each measured under load in docs/performance.md:

- it raises its mmap threshold after the first multi-megabyte buffer is freed (the job part of
  the exposition, made again whenever job data changes) and keeps the next ones in its heaps;
- it gives allocating threads arenas of their own, up to eight per core, each keeping its
  high-water mark;
- every thread keeps a cache of freed blocks (tcache) that no other thread can reuse, so blocks
  freed by serving threads after a refresh are parked there while the arena grows for the next.

The third can only be changed through the GLIBC_TUNABLES environment variable, which glibc reads
once, at start; so all three are set there. The command-line entry replaces its own process
(same PID, same arguments) by one started with the tunables set, before it opens a socket or
starts a thread. The cost is one more interpreter start-up. Settings an operator gave in
GLIBC_TUNABLES or in glibc's older MALLOC_* variables are kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLES: tuple[tuple[str, str, str | None], ...] = (
    ("glibc.malloc.tcache_count", "0", None),
    ("glibc.malloc.arena_max", "1", "MALLOC_ARENA_MAX"),
    ("glibc.malloc.mmap_threshold", str(1 << 20), "MALLOC_MMAP_THRESHOLD_"),
)
"""(tunable, value, the older environment variable that sets the same thing)."""


def tunables(environ: Mapping[str, str]) -> str | None:
    """The GLIBC_TUNABLES to start with, or None if `environ` already sets all of ours.

    Idempotent: applied to its own result it gives None, which is what ends the re-exec.
    """
    existing = environ.get("GLIBC_TUNABLES", "").strip().strip(":")
    named = {item.partition("=")[0] for item in existing.split(":") if item}
    missing = [
        f"{name}={value}"
        for name, value, alias in TUNABLES
        if name not in named and (alias is None or alias not in environ)
    ]
    if not missing:
        return None
    return ":".join([existing, *missing] if existing else missing)


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # musl, macOS, Windows
        return False


def restart_with_tunables() -> None:
    """Replace this process by itself with our tunables set; return only if nothing to do.

    Returns at once without glibc, or when the tunables are already in the environment (the
    process this started). If the exec itself fails the exporter runs on with glibc's defaults:
    memory creeps, nothing else changes.
    """
    if not is_glibc():
        return
    value = tunables(os.environ)
    if value is None or not sys.executable or not sys.orig_argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # The same interpreter and arguments this process was started with; no shell involved.
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": value})  # noqa: S606
    except OSError:
        return
