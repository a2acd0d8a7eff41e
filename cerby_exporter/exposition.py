"""Gauge lines in the Prometheus text format, which OpenMetrics shares for gauges.

The per-job families are written here rather than through prometheus_client's objects because
there may be ten thousand jobs: each job's lines are rendered once when its data changes and
reused by every scrape until then.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from typing import Final

Labels = Sequence[tuple[str, str]]
GZIP_LEVEL: Final = 6


def gzip_member(data: bytes) -> bytes:
    """`data` as one gzip member; members concatenated are one valid gzip stream (RFC 1952)."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


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
