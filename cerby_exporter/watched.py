"""A file the exporter re-reads when it changes: the API key, the job-ID list, the web config,
the webhook keys.

Operators edit these in place, or Kubernetes swaps a Secret's `..data` symlink under them; the
change is noticed by comparing (mtime, size, inode) and takes effect without a restart. The
check is a `stat`, blocking work, so callers run `changed()` in a thread, never on the loop.
"""

from __future__ import annotations

import os
from pathlib import Path

Stamp = tuple[int, int, int]


def stamp_of(path: Path) -> Stamp | None:
    """What identifies one version of the file; None when it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size, info.st_ino)


class WatchedFile:
    """Reads `path` again only when its stamp differs from the last one read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: Stamp | None = None

    def changed(self) -> bytes | None:
        """The new content if the file changed since the last call, else None.

        Raises OSError when the file cannot be read; the stamp is kept from before, so the
        next call tries again.
        """
        stamp = stamp_of(self.path)
        if stamp is not None and stamp == self._stamp:
            return None
        data = self.path.read_bytes()
        self._stamp = stamp
        return data
