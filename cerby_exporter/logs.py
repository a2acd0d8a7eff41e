"""One line per event, in logfmt or JSON, with the API key scrubbed from anything written.

The code never logs the key; the redactor is the second lock on that door, covering exception
texts of third-party code that could quote a header.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Final, TextIO

REDACTED: Final = "<redacted>"
_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class Redactor:
    """Remembers every key the process has held and blanks it out of text."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        if len(secret) < 4:  # blanking a one-letter "key" would mangle every line
            return
        with self._lock:
            if secret not in self._secrets:
                self._secrets = (*self._secrets, secret)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\t') and value.isprintable():
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _event(record: logging.LogRecord) -> dict[str, str]:
    event = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info and record.exc_info[0] is not None:
        # The type and message only: a traceback would break the one-line promise.
        event["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
    return event


class LogfmtFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in _event(record).items())
        return self._redact(line)


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(json.dumps(_event(record), ensure_ascii=False))


def configure(level: str, fmt: str, redact: Redactor, stream: TextIO | None = None) -> None:
    """Route the root logger to one stream handler; httpx's per-request lines stay quiet."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else LogfmtFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.ERROR))
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler.addFilter(_quiet_bad_requests)


def _quiet_bad_requests(record: logging.LogRecord) -> bool:
    """aiohttp logs every malformed request it refuses at error level, with a traceback: a
    port scanner would flood the log. The client got its 400; here it is one debug line."""
    if record.name != "aiohttp.server":
        return True
    record.exc_info = None
    record.exc_text = None
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger().isEnabledFor(logging.DEBUG)
