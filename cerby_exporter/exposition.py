"""Gauge lines in the Prometheus text format, which OpenMetrics shares for gauges.

The per-job families are written here rather than through prometheus_client's objects because
there may be ten thousand jobs: each job's lines are rendered once when its data changes and
reused by every scrape until then.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

Labels = Sequence[tuple[str, str]]
GZIP_LEVEL: Final = 6
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""RFC 1952 member header: deflate, no flags, no modification time, unknown OS."""


LOOPBACK_SEGMENT: Final = 65_535 - 40 - 12
"""Most payload one TCP segment carries on Linux's loopback (MTU 65 536): the largest IPv4
packet less the IPv4 and TCP headers and the timestamp option."""
DEFLATED_CHUNK: Final = 63 * 1024
"""Bytes of deflated output per chunk of a `GzipPrefix`, each chunk one write to the socket.

With the answer's headers in front of the first one, a chunk still fits one loopback segment. A
write of exactly 64 KiB would not: each would leave a segment of 53 bytes to send, pass
through the stack and wake the reader on its own (a Prometheus agent or sidecar on the same
host scrapes over loopback). Over Ethernet any write ends in a partial segment; the size
changes nothing there.
"""


@dataclass(frozen=True, slots=True)
class GzipPrefix:
    """The start of a gzip member: the header and `size` bytes deflated up to a byte boundary.

    The deflate stream is flushed (Z_SYNC_FLUSH) but not finished, so `gzip_finish` can add any
    tail, in stored blocks of its own, and close the member: the prefix is compressed once
    however many tails follow. The result is one ordinary member that every gzip reader accepts.

    The deflated bytes are held in `chunks` of `DEFLATED_CHUNK` bytes each (the last one
    shorter). The job part is replaced every refresh round; made of blocks of one size, each new
    one fits where an old one was freed, where one buffer of a slightly different size every
    time would often not fit, and the heap would grow by its size instead.
    """

    chunks: tuple[bytes, ...]
    crc: int
    size: int

    @property
    def deflated(self) -> bytes:
        return b"".join(self.chunks)


def gzip_prefix(data: bytes) -> GzipPrefix:
    return gzip_pieces([data])


def gzip_pieces(pieces: Iterable[bytes]) -> GzipPrefix:
    """The prefix of the pieces' concatenation, deflated as they come: the whole text is never
    held at once, only its compressed form."""
    writer = GzipWriter()
    for piece in pieces:
        writer.write(piece)
    return writer.prefix()


class GzipWriter:
    """`gzip_pieces` a piece at a time, for a caller that does other work between pieces."""

    __slots__ = ("_chunks", "_compressor", "_crc", "_filled", "_size", "_staging")

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._staging = bytearray(DEFLATED_CHUNK)
        self._filled = 0
        self._chunks: list[bytes] = []
        self._crc = 0
        self._size = 0
        self._keep(_GZIP_HEADER)

    def write(self, piece: bytes) -> None:
        self._keep(self._compressor.compress(piece))
        self._crc = zlib.crc32(piece, self._crc)
        self._size += len(piece)

    def prefix(self) -> GzipPrefix:
        """What was written, flushed to a byte boundary; the writer is done with."""
        self._keep(self._compressor.flush(zlib.Z_SYNC_FLUSH))
        if self._filled:
            self._chunks.append(bytes(memoryview(self._staging)[: self._filled]))
        return GzipPrefix(tuple(self._chunks), self._crc, self._size)

    def _keep(self, deflated: bytes) -> None:
        """Deflated output into the staging chunk, kept as bytes each time it is full."""
        view = memoryview(deflated)
        while view:
            taken = view[: DEFLATED_CHUNK - self._filled]
            self._staging[self._filled : self._filled + len(taken)] = taken
            self._filled += len(taken)
            view = view[len(taken) :]
            if self._filled == DEFLATED_CHUNK:
                self._chunks.append(bytes(self._staging))
                self._filled = 0


def inflate(prefix: GzipPrefix) -> bytes:
    """The data a prefix holds, uncompressed again."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    stream = memoryview(prefix.chunks[0])[len(_GZIP_HEADER) :]
    parts = [inflater.decompress(stream), *map(inflater.decompress, prefix.chunks[1:])]
    return b"".join(parts)


EMPTY_PREFIX: Final = GzipPrefix((_GZIP_HEADER,), 0, 0)


def gzip_tail(prefix: GzipPrefix, tail: bytes) -> bytes:
    """What follows `prefix.deflated` to make one gzip member of the prefix's data and `tail`.

    The tail (health and self-metrics, new with every scrape) goes in stored deflate blocks, not
    compressed: deflating it cost more than the rest of a warm scrape's work, for a few bytes
    saved on an answer whose job part is compressed (docs/performance.md).
    """
    trailer = struct.pack(
        "<II", zlib.crc32(tail, prefix.crc), (prefix.size + len(tail)) & 0xFFFFFFFF
    )
    return stored_blocks(tail) + trailer


STORED_BLOCK_MAX: Final = 0xFFFF


def stored_blocks(data: bytes) -> bytes:
    """`data` as deflate stored blocks (RFC 1951, 3.2.4), the last one final, for a stream that
    stands at a byte boundary (the start, or after a sync flush). Empty data is one empty block.
    """
    parts: list[bytes] = []
    start = 0
    while True:
        chunk = data[start : start + STORED_BLOCK_MAX]
        start += STORED_BLOCK_MAX
        final = start >= len(data)
        parts.append(struct.pack("<BHH", final, len(chunk), len(chunk) ^ 0xFFFF))
        parts.append(chunk)
        if final:
            return b"".join(parts)


def gzip_finish(prefix: GzipPrefix, tail: bytes) -> bytes:
    """One gzip member holding the prefix's data followed by `tail`."""
    return prefix.deflated + gzip_tail(prefix, tail)


def gzip_member(data: bytes) -> bytes:
    return gzip_finish(EMPTY_PREFIX, data)


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed are the three characters the format escapes."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


def format_value(value: float) -> str:
    """Shortest exact text; Prometheus parses Python's float repr as Go parses its own."""
    if value == 0:
        return "0"
    if value == 1:
        return "1"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def label_text(labels: Labels) -> str:
    """`key="value",...`, values escaped: what goes between a sample's braces."""
    return ",".join(f'{key}="{escape_label_value(text)}"' for key, text in labels)


def sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}\n"
    return f"{name}{{{label_text(labels)}}} {format_value(value)}\n"


def header(name: str, help_text: str, kind: str = "gauge") -> str:
    """HELP and TYPE lines; help texts are ours and never hold a backslash or line feed."""
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
