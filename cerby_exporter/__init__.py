"""Prometheus exporter for Cerby automation jobs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cerby-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
