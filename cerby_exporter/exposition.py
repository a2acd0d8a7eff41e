"""Gauge lines in the Prometheus text format, which OpenMetrics shares for gauges.

The per-job families are written here rather than through prometheus_client's objects because
there may be ten thousand jobs: each job's lines are rendered once when its data changes and
reused by every scrape until then.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client.core import Metric

Labels = Sequence[tuple[str, str]]
GZIP_LEVEL: Final = 6
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""RFC 1952 member header: deflate, no flags, no modification time, unknown OS."""


@dataclass(frozen=True, slots=True)
class GzipPrefix:
    """The start of a gzip member: the header and `size` bytes deflated up to a byte boundary.

    The deflate stream is flushed (Z_SYNC_FLUSH) but not finished, so `gzip_finish` can add any
    tail, deflated on its own, and close the member: the prefix is compressed once however many
    tails follow. The result is one ordinary member that every gzip reader accepts.
    """

    deflated: bytes
    crc: int
    size: int


def gzip_prefix(data: bytes) -> GzipPrefix:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return GzipPrefix(_GZIP_HEADER + deflated, zlib.crc32(data), len(data))


EMPTY_PREFIX: Final = GzipPrefix(_GZIP_HEADER, 0, 0)


def gzip_tail(prefix: GzipPrefix, tail: bytes) -> bytes:
    """What follows `prefix.deflated` to make one gzip member of the prefix's data and `tail`."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    trailer = struct.pack(
        "<II", zlib.crc32(tail, prefix.crc), (prefix.size + len(tail)) & 0xFFFFFFFF
    )
    return compressor.compress(tail) + compressor.flush() + trailer


def gzip_finish(prefix: GzipPrefix, tail: bytes) -> bytes:
    """One gzip member holding the prefix's data followed by `tail`."""
    return prefix.deflated + gzip_tail(prefix, tail)


def gzip_member(data: bytes) -> bytes:
    return gzip_finish(EMPTY_PREFIX, data)


_PLAIN_TYPES: Final = frozenset({"counter", "gauge", "histogram"})
_LEGACY_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_OPENMETRICS_ONLY: Final = ("_created", "_gsum", "_gcount")


def render_families(families: Iterable[Metric], openmetrics: bool) -> bytes | None:
    """Families as prometheus_client writes them (OpenMetrics without `# EOF`), byte for byte,
    in a fraction of its time: for counters, gauges and histograms with plain names and no
    unit, exemplar or timestamp, which is what the exporter's own metrics are. None for
    anything else, which the caller leaves to prometheus_client."""
    out: list[str] = []
    for family in families:
        if family.type not in _PLAIN_TYPES or family.unit or not _plain_name(family.name):
            return None
        if openmetrics:
            name, help_text = family.name, escape_label_value(family.documentation)
        else:
            name = family.name + "_total" if family.type == "counter" else family.name
            help_text = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n")
        for s in family.samples:
            if (
                s.timestamp is not None
                or s.exemplar is not None
                or getattr(s, "native_histogram", None) is not None
                or s.name.endswith(_OPENMETRICS_ONLY)
                or not _plain_name(s.name)
                or not all(map(_plain_name, s.labels))
            ):
                return None
            if s.labels:
                labels = ",".join(
                    f'{key}="{escape_label_value(text)}"' for key, text in sorted(s.labels.items())
                )
                out.append(f"{s.name}{{{labels}}} {go_float(s.value)}\n")
            else:
                out.append(f"{s.name} {go_float(s.value)}\n")
    return "".join(out).encode()


@functools.lru_cache(maxsize=256)
def _plain_name(name: str) -> bool:
    """A metric or label name that needs no escaping (the legacy character set)."""
    return _LEGACY_NAME.fullmatch(name) is not None


def go_float(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    number = float(value)
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if math.isnan(number):
        return "NaN"
    text = repr(number)
    dot = text.find(".")
    if number > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


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


def sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}\n"
    rendered = ",".join(f'{key}="{escape_label_value(text)}"' for key, text in labels)
    return f"{name}{{{rendered}}} {format_value(value)}\n"


def header(name: str, help_text: str, kind: str = "gauge") -> str:
    """HELP and TYPE lines; help texts are ours and never hold a backslash or line feed."""
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
