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
starts a thread, and only once: in secure mode (a setuid or file-capability binary) glibc drops
tunables, and asking again would loop. The cost is one more interpreter start-up. Settings an
operator gave in GLIBC_TUNABLES or in glibc's older MALLOC_* variables are kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Final

TUNABLES: tuple[tuple[str, str, str | None], ...] = (
    ("glibc.malloc.tcache_count", "0", None),
    ("glibc.malloc.arena_max", "1", "MALLOC_ARENA_MAX"),
    ("glibc.malloc.mmap_threshold", str(1 << 20), "MALLOC_MMAP_THRESHOLD_"),
)
"""(tunable, value, the older environment variable that sets the same thing)."""

RESTARTED: Final = "_CERBY_EXPORTER_RESTARTED"
"""Set for the restarted process, which removes it: one restart at most."""


def tunables(environ: Mapping[str, str]) -> str | None:
    """The GLIBC_TUNABLES to start with, or None if `environ` already sets all of ours.

    Idempotent: applied to its own result it gives None.
    """
    existing = environ.get("GLIBC_TUNABLES", "").strip().strip(":")
    # An item without "=" sets nothing (glibc skips it), so ours is still added.
    named = {name for name, equals, _ in (i.partition("=") for i in existing.split(":")) if equals}
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


def rerunnable(argv0: str) -> bool:
    """Running it again means running a file (a script, the console entry, `-m`'s module).

    Not code from `-c`, standard input (already read) or an interactive session.
    """
    return bool(argv0) and argv0 not in ("-c", "-") and os.path.isfile(argv0)


def restart_with_tunables() -> None:
    """Replace this process by itself with our tunables set; return only if nothing to do.

    Returns at once without glibc, in the process this started, when the tunables are already
    in the environment, or when the command line cannot be run again. If the exec itself fails
    the exporter runs on with glibc's defaults: memory creeps, nothing else changes.
    """
    if os.environ.pop(RESTARTED, None) is not None or not is_glibc():
        return
    value = tunables(os.environ)
    if value is None or not sys.executable or not rerunnable(sys.argv[0]):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # The same interpreter and arguments this process was started with; no shell involved.
        environ = {**os.environ, "GLIBC_TUNABLES": value, RESTARTED: "1"}
        os.execve(sys.executable, sys.orig_argv, environ)  # noqa: S606
    except OSError:
        return
