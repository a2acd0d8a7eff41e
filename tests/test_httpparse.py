"""Request heads, parsed strictly: what the server accepts, and every way it refuses."""

from __future__ import annotations

import io

import pytest

from cerby_exporter.httpparse import (
    MAX_HEAD_BYTES,
    MAX_HEADER_LINE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    Head,
    HttpError,
    IncompleteHead,
    body_length,
    keep_alive,
    parse_header_line,
    parse_request_line,
    read_head,
    split_target,
)

PROMETHEUS = (
    b"GET /metrics HTTP/1.1\r\n"
    b"Host: exporter:10366\r\n"
    b"User-Agent: Prometheus/2.42.0\r\n"
    b"Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2\r\n"
    b"Accept-Encoding: gzip\r\n"
    b"X-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
    b"\r\n"
)


def head_of(raw: bytes) -> Head | None:
    return read_head(io.BufferedReader(io.BytesIO(raw)).readline)


def refusal(raw: bytes) -> tuple[int, str]:
    with pytest.raises(HttpError) as caught:
        head_of(raw)
    return caught.value.status, caught.value.reason


def test_a_prometheus_scrape() -> None:
    head = head_of(PROMETHEUS)
    assert head == Head(
        "GET",
        "/metrics",
        "HTTP/1.1",
        {
            "host": "exporter:10366",
            "user-agent": "Prometheus/2.42.0",
            "accept": "application/openmetrics-text;version=1.0.0;q=0.5,"
            "text/plain;version=0.0.4;q=0.2",
            "accept-encoding": "gzip",
            "x-prometheus-scrape-timeout-seconds": "10",
        },
    )
    assert head.keep_alive


def test_requests_follow_each_other_on_one_connection() -> None:
    reader = io.BufferedReader(io.BytesIO(PROMETHEUS + b"HEAD /healthz HTTP/1.0\r\n\r\n"))
    first = read_head(reader.readline)
    second = read_head(reader.readline)
    assert first is not None
    assert first.target == "/metrics"
    assert second == Head("HEAD", "/healthz", "HTTP/1.0", {})
    assert not second.keep_alive
    assert read_head(reader.readline) is None


def test_bare_line_feeds_and_leading_empty_lines_are_tolerated() -> None:
    head = head_of(b"\r\n\nGET / HTTP/1.1\nHost: x\n\n")
    assert head == Head("GET", "/", "HTTP/1.1", {"host": "x"})
    assert refusal(b"\r\n" * 5 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == (400, "no request line")


def test_a_closed_connection_is_no_request_and_a_cut_one_is_incomplete() -> None:
    assert head_of(b"") is None
    with pytest.raises(IncompleteHead):
        head_of(b"GET /metrics HTT")
    with pytest.raises(IncompleteHead):
        head_of(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    with pytest.raises(IncompleteHead):
        head_of(b"GET /metrics HTTP/1.1\r\nHost: x")


def test_header_values_are_trimmed_and_repeated_fields_joined() -> None:
    head = head_of(
        b"GET / HTTP/1.1\r\nHost: x\r\nAccept:   text/plain \t\r\nACCEPT: */*\r\n"
        b"X-Empty:\r\nX-Latin: caf\xe9\r\n\r\n"
    )
    assert head is not None
    assert head.headers == {
        "host": "x",
        "accept": "text/plain, */*",
        "x-empty": "",
        "x-latin": "café",
    }


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        (b"GET /metrics\r\n", 400, "malformed request line"),
        (b"GET  /metrics HTTP/1.1\r\n", 400, "malformed request line"),
        (b"GET /metrics HTTP/1.1 extra\r\n", 400, "malformed request line"),
        (b"GET /a b HTTP/1.1\r\n", 400, "malformed request line"),
        (b"G(T /metrics HTTP/1.1\r\n", 400, "malformed method"),
        (b"GET /metrics HTTP/1\r\n", 400, "malformed HTTP version"),
        (b"GET /metrics http/1.1\r\n", 400, "malformed HTTP version"),
        (b"GET /metrics HTTP/2.0\r\n", 505, "HTTP version not supported"),
        (b"GET /metrics HTTP/0.9\r\n", 505, "HTTP version not supported"),
        (b"GET /m\x00etrics HTTP/1.1\r\n", 400, "malformed request target"),
        (b"GET /m\xc3\xa9trics HTTP/1.1\r\n", 400, "malformed request target"),
        (b"GET /m\tetrics HTTP/1.1\r\n", 400, "malformed request target"),
    ],
)
def test_malformed_request_lines_are_refused(line: bytes, status: int, reason: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_request_line(line)
    assert (caught.value.status, caught.value.reason) == (status, reason)


def test_a_request_line_within_the_limit_is_read_and_one_past_it_is_414() -> None:
    fits = b"GET /" + b"a" * (MAX_REQUEST_LINE - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1\r\n"
    assert len(fits) == MAX_REQUEST_LINE
    head = head_of(fits + b"Host: x\r\n\r\n")
    assert head is not None
    assert len(head.target) == MAX_REQUEST_LINE - 15
    too_long = fits.replace(b"/a", b"/aa", 1)
    assert refusal(too_long + b"Host: x\r\n\r\n") == (414, "request line too long")


def test_header_limits_give_431() -> None:
    start = b"GET / HTTP/1.1\r\nHost: x\r\n"
    line = b"X-Big: " + b"b" * (MAX_HEADER_LINE - len(b"X-Big: \r\n")) + b"\r\n"
    assert len(line) == MAX_HEADER_LINE
    assert head_of(start + line + b"\r\n") is not None
    too_long = line.replace(b": b", b": bb", 1)
    assert refusal(start + too_long + b"\r\n") == (431, "header line too long")
    many = b"".join(b"X-%d: 1\r\n" % n for n in range(MAX_HEADERS))
    assert refusal(start + many + b"\r\n") == (431, "too many header fields")
    assert head_of(start + many[: many.rindex(b"X-")] + b"\r\n") is not None
    bulky = line * (MAX_HEAD_BYTES // MAX_HEADER_LINE + 1)
    assert refusal(start + bulky + b"\r\n") == (431, "too many header fields")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b" continued\r\n", "folded header line"),
        (b"\tcontinued\r\n", "folded header line"),
        (b"No colon\r\n", "malformed header line"),
        (b"Space before : colon\r\n", "malformed header line"),
        (b": no name\r\n", "malformed header line"),
        (b"Bad(name): x\r\n", "malformed header line"),
        (b"X-Nul: a\x00b\r\n", "control character in a header value"),
        (b"X-Cr: a\rb\r\n", "control character in a header value"),
        (b"X-Del: a\x7fb\r\n", "control character in a header value"),
    ],
)
def test_malformed_header_lines_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(HttpError) as caught:
        parse_header_line(line)
    assert (caught.value.status, caught.value.reason) == (400, reason)


def test_header_lines_that_are_fine() -> None:
    assert parse_header_line(b"X-Tab: a\tb\r\n") == ("x-tab", "a\tb")
    assert parse_header_line(b"x~weird!name: v\n") == ("x~weird!name", "v")
    assert parse_header_line(b"Authorization: Basic YTpi\r\n") == ("authorization", "Basic YTpi")


def test_host_is_required_once_in_http_1_1_only() -> None:
    assert refusal(b"GET / HTTP/1.1\r\n\r\n") == (400, "missing Host header")
    assert refusal(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == (
        400,
        "more than one Host header",
    )
    assert head_of(b"GET / HTTP/1.0\r\n\r\n") == Head("GET", "/", "HTTP/1.0", {})


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        ("HTTP/1.1", "", True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Keep-Alive, Close", False),
        ("HTTP/1.1", "keep-alive", True),
        ("HTTP/1.1", "upgrade", True),
        ("HTTP/1.0", "", False),
        ("HTTP/1.0", "Keep-Alive", True),
        ("HTTP/1.0", "keep-alive, close", False),
    ],
)
def test_keep_alive(version: str, connection: str, expected: bool) -> None:
    assert keep_alive(version, connection) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 0),
        ({"content-length": "0"}, 0),
        ({"content-length": "24"}, 24),
        ({"content-length": "24, 24"}, 24),
        ({"transfer-encoding": "chunked"}, None),
        ({"transfer-encoding": "chunked", "content-length": "5"}, None),
    ],
)
def test_body_length(headers: dict[str, str], expected: int | None) -> None:
    assert body_length(headers) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "", "0x10", "12, 13", "٣", "1" * 19, "+5"])
def test_a_bad_content_length_is_400(value: str) -> None:
    with pytest.raises(HttpError) as caught:
        body_length({"content-length": value})
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/metrics", ("/metrics", "")),
        ("/probe?target=x&y=", ("/probe", "target=x&y=")),
        ("/?", ("/", "")),
        ("http://exporter:10366/metrics?a=1", ("/metrics", "a=1")),
        ("HTTPS://exporter", ("/", "")),
        ("http://exporter?a=1", ("/", "a=1")),
    ],
)
def test_targets(target: str, expected: tuple[str, str]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize("target", ["*", "metrics", "ftp://host/metrics", "http:/metrics"])
def test_targets_that_are_neither_origin_nor_absolute_form(target: str) -> None:
    with pytest.raises(HttpError) as caught:
        split_target(target)
    assert (caught.value.status, caught.value.reason) == (400, "malformed request target")
