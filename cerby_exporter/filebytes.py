"""Bytes kept also in an anonymous in-memory file, so a server can send them with sendfile().

The compressed job part of the exposition is the same for every scrape until job data changes.
Sent from a file, the kernel takes it from the file's pages, as a static-file server does,
instead of copying half a megabyte out of the process for every answer. The file is made once,
when the part is, and closed when the last answer that uses it is sent.
"""

from __future__ import annotations

import os
import weakref


class FileBytes:
    """`data`, and `fd`: a file holding the same bytes, or None where the system has no
    memfd_create (the bytes are sent as they are then)."""

    __slots__ = ("__weakref__", "data", "fd")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.fd = _memory_file(data)
        if self.fd is not None:
            weakref.finalize(self, os.close, self.fd)

    def __len__(self) -> int:
        return len(self.data)


def _memory_file(data: bytes) -> int | None:
    try:
        fd = os.memfd_create("cerby-exporter-part", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        return None
    return fd
