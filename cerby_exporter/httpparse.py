"""HTTP/1.x request heads, read strictly and within limits.

This is the part of the server that sees bytes from anyone who can connect, so it is kept pure
(a `readline` in, a `Head` or an `HttpError` out) and every refusal is tested without a socket.
It reads only what an exporter needs: a request line, header fields and the body's framing.
Reading the head by hand, rather than through `http.server` and its e-mail parser, also keeps a
warm scrape cheap: the head is parsed in a few microseconds and leaves little garbage behind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

MAX_REQUEST_LINE: Final = 8192
"""Bytes, line ending included; a longer request line gets 414."""
MAX_HEADER_LINE: Final = 8192
"""Bytes of one header line; a longer one gets 431."""
MAX_HEADERS: Final = 100
MAX_HEAD_BYTES: Final = 65536
"""Bytes of all header lines together; more gets 431."""
MAX_EMPTY_LINES: Final = 4
"""Empty lines tolerated before a request line (RFC 9112, section 2.2)."""

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION: Final = re.compile(rb"HTTP/[0-9]\.[0-9]")
_TARGET_BYTES: Final = re.compile(rb"[!-~]+")
"""Visible ASCII: a request target holds no space, control character or raw non-ASCII byte."""
_FIELD_VALUE: Final = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
"""Anything but control characters (tab allowed)."""
_LINE_ENDS: Final = (b"\r\n", b"\n")
SUPPORTED_VERSIONS: Final = ("HTTP/1.0", "HTTP/1.1")


class HttpError(Exception):
    """A request refused before it reaches the application; the connection is closed after."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class IncompleteHead(EOFError):
    """The client stopped sending in the middle of a request head."""


@dataclass(frozen=True, slots=True)
class Head:
    method: str
    target: str
    version: str
    headers: Mapping[str, str]
    """Lower-case names; repeated fields joined with ", "."""

    @property
    def keep_alive(self) -> bool:
        return keep_alive(self.version, self.headers.get("connection", ""))


def read_head(readline: Callable[[int], bytes]) -> Head | None:
    """The next request head from `readline` (as `BufferedReader.readline(limit)`), or None if
    the client closed the connection between requests."""
    line = _request_line(readline)
    if line is None:
        return None
    method, target, version = parse_request_line(line)
    headers = _header_fields(readline)
    if version == "HTTP/1.1" and "host" not in headers:
        raise HttpError(400, "missing Host header")
    return Head(method, target, version, headers)


def _request_line(readline: Callable[[int], bytes]) -> bytes | None:
    for _ in range(MAX_EMPTY_LINES + 1):
        line = readline(MAX_REQUEST_LINE + 1)
        if not line:
            return None
        if line not in _LINE_ENDS:
            break
    else:
        raise HttpError(400, "no request line")
    if len(line) > MAX_REQUEST_LINE:
        raise HttpError(414, "request line too long")
    if not line.endswith(b"\n"):
        raise IncompleteHead("request line cut short")
    return line


def _header_fields(readline: Callable[[int], bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    count = total = 0
    while True:
        line = readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise HttpError(431, "header line too long")
        if not line.endswith(b"\n"):
            raise IncompleteHead("header cut short")
        if line in _LINE_ENDS:
            return headers
        count += 1
        total += len(line)
        if count > MAX_HEADERS or total > MAX_HEAD_BYTES:
            raise HttpError(431, "too many header fields")
        name, value = parse_header_line(line)
        if name in headers:
            if name == "host":
                raise HttpError(400, "more than one Host header")
            value = f"{headers[name]}, {value}"
        headers[name] = value


def _strip_line_end(line: bytes) -> bytes:
    return line[:-2] if line.endswith(b"\r\n") else line.removesuffix(b"\n")


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """Method, target and version of `METHOD SP target SP HTTP/x.y`, line ending included."""
    parts = _strip_line_end(line).split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if _TOKEN.fullmatch(method) is None:
        raise HttpError(400, "malformed method")
    if _VERSION.fullmatch(version) is None:
        raise HttpError(400, "malformed HTTP version")
    if _TARGET_BYTES.fullmatch(target) is None:
        raise HttpError(400, "malformed request target")
    text_version = version.decode("ascii")
    if text_version not in SUPPORTED_VERSIONS:
        raise HttpError(505, "HTTP version not supported")
    return method.decode("ascii"), target.decode("ascii"), text_version


def parse_header_line(line: bytes) -> tuple[str, str]:
    """Lower-case name and value of `Name: value`, line ending included. A line that starts
    with white space continues the previous one (obsolete folding): refused, as RFC 9112 allows,
    so that no two readers of the request disagree on its fields."""
    text = _strip_line_end(line)
    if text[:1] in (b" ", b"\t"):
        raise HttpError(400, "folded header line")
    name, colon, value = text.partition(b":")
    if not colon or _TOKEN.fullmatch(name) is None:
        raise HttpError(400, "malformed header line")
    value = value.strip(b" \t")
    if _FIELD_VALUE.fullmatch(value) is None:
        raise HttpError(400, "control character in a header value")
    return name.decode("ascii").lower(), value.decode("latin-1")


def keep_alive(version: str, connection: str) -> bool:
    """Whether the connection stays open after this exchange: by default in HTTP/1.1, on
    request in HTTP/1.0."""
    tokens = {token.strip().lower() for token in connection.split(",")}
    if "close" in tokens:
        return False
    return version == "HTTP/1.1" or "keep-alive" in tokens


def body_length(headers: Mapping[str, str]) -> int | None:
    """Bytes of request body that follow the head; None when only a transfer coding frames
    it (the exporter reads no request bodies, so such a connection is closed after answering).
    """
    if "transfer-encoding" in headers:
        return None
    field = headers.get("content-length")
    if field is None:
        return 0
    values = {item.strip() for item in field.split(",")}
    value = values.pop()
    if values or not value.isascii() or not value.isdigit() or len(value) > 18:
        raise HttpError(400, "invalid Content-Length")
    return int(value)


def split_target(target: str) -> tuple[str, str]:
    """Path and query of an origin-form (`/metrics?x`) or absolute-form
    (`http://host/metrics?x`) target; anything else is refused."""
    if not target.startswith("/"):
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise HttpError(400, "malformed request target")
        end = next((i for i, char in enumerate(rest) if char in "/?"), len(rest))
        target = rest[end:] if rest[end : end + 1] == "/" else "/" + rest[end:]
    path, _, query = target.partition("?")
    return path, query
