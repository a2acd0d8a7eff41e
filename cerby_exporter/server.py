"""Sockets around the `App`: a threaded HTTP/1.1 server, so scrapes are served concurrently.

Each connection has a thread that reads request heads (`httpparse`), asks the app, and writes
the answer. Three details matter for Prometheus. Connections are kept alive. TCP_NODELAY is set,
because a keep-alive response written in pieces otherwise waits ~40 ms on Nagle's algorithm
meeting a delayed ACK; and the head and the body go out in one `sendmsg` all the same, without
copying the body (`send_all`), which halves the time to send a large exposition on loopback.
On stop, requests already being answered finish before the process exits.

The connection loop is written here rather than taken from `http.server`: its parser goes
through the e-mail package for every request and costs more than a warm scrape's own work.
"""

from __future__ import annotations

import email.utils
import io
import logging
import os
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qs

from cerby_exporter import __version__
from cerby_exporter.app import App, Request, Response
from cerby_exporter.filebytes import FileBytes
from cerby_exporter.httpparse import (
    Head,
    HttpError,
    body_length,
    read_head,
    split_target,
)

log = logging.getLogger(__name__)

MAX_QUERY_BYTES: Final = 2048
"""A job ID is 36 characters; a query string longer than this is not a scrape."""
MAX_DISCARDED_BODY: Final = 65536
"""A GET with a body longer than this is answered, then its connection closed unread."""

HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a client has to finish the TLS handshake before its connection is dropped."""
IDLE_TIMEOUT: Final = 300.0
"""Seconds a kept-alive connection may wait for its next request: longer than any scrape
interval, so Prometheus keeps its connection, while a forgotten one frees its thread."""
HEAD_TIMEOUT: Final = 10.0
"""Seconds between the pieces of one request head, once it has started."""

SERVER_NAME: Final = f"cerby-exporter/{__version__}"
ALLOWED: Final = (("Allow", "GET, HEAD"),)
_PHRASES: Final = {status.value: status.phrase for status in HTTPStatus}

Authenticator = Callable[[Request], Response | None]
"""Returns a response that refuses the request, or None to let it through."""
TLSContext = ssl.SSLContext | Callable[[], ssl.SSLContext]
"""A fixed context, or one asked for each connection (so renewed certificates are used)."""


@dataclass(frozen=True, slots=True)
class _Hooks:
    app: App
    authenticate: Authenticator | None
    headers: Callable[[], Sequence[tuple[str, str]]] | None = None


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True  # idle keep-alive connections must not hold the process open
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hooks: _Hooks) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Connection, bind_and_activate=False)
        if family == socket.AF_INET6 and address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise
        self.hooks = hooks
        self.active = 0
        self.active_lock = threading.Lock()
        self.closing = False
        self.tls: Callable[[], ssl.SSLContext] | None = None
        self.date = DateHeader()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: the TLS handshake, then the requests.

        The handshake happens here rather than in `accept()`, so a client that connects and says
        nothing holds up only its own thread, and for at most `HANDSHAKE_TIMEOUT` seconds.
        """
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        try:
            connection = self.tls().wrap_socket(
                request, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as exc:
            log.warning("TLS unavailable for a connection: %s", type(exc).__name__)
            return
        try:
            connection.settimeout(HANDSHAKE_TIMEOUT)
            connection.do_handshake()
        except OSError as exc:  # ssl.SSLError and TimeoutError included
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            connection.close()
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            self.shutdown_request(connection)

    def handle_error(self, request: object, client_address: object) -> None:
        """A scraper that hangs up early is logged, not dumped as a traceback."""
        log.debug("connection from %s ended with an error", client_address)


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: requests answered in turn until either side closes it."""

    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        try:
            while self._exchange(sock, reader):
                pass
        except (OSError, EOFError) as exc:  # timeouts, resets, a head cut short
            log.debug("connection from %s closed: %s", self.client_address[0], type(exc).__name__)
        finally:
            reader.close()

    def _exchange(self, sock: socket.socket, reader: io.BufferedReader) -> bool:
        """Read one request and answer it; False when the connection is to be closed."""
        sock.settimeout(IDLE_TIMEOUT)
        if not reader.peek(1):
            return False
        sock.settimeout(HEAD_TIMEOUT)
        try:
            head = read_head(reader.readline)
            if head is None:
                return False
            length = body_length(head.headers)
        except HttpError as exc:
            self._send(sock, _refusal(exc), "HTTP/1.1", keep=False, head=False)
            return False
        keep = head.keep_alive
        if head.method not in ("GET", "HEAD"):
            # A body the request may carry is never read: the connection cannot be reused.
            response = Response(405, b"405 method not allowed\n", headers=ALLOWED)
            self._send(sock, response, head.version, keep=False, head=False)
            return False
        if length is None or length > MAX_DISCARDED_BODY:
            keep = False
        elif length and len(reader.read(length)) < length:
            return False
        with self.server.active_lock:
            self.server.active += 1
        try:
            response = self._respond(head)
            keep = keep and not self.server.closing  # a scrape answered during stop is the last
            self._send(sock, response, head.version, keep, head.method == "HEAD")
        finally:
            with self.server.active_lock:
                self.server.active -= 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                '%s "%s %s %s" %d %d',
                self.client_address[0],
                head.method,
                head.target,
                head.version,
                response.status,
                response.length,
            )
        return keep

    def _respond(self, head: Head) -> Response:
        try:
            path, query = split_target(head.target)
        except HttpError as exc:
            return _refusal(exc)
        if len(query) > MAX_QUERY_BYTES:
            return Response(414, b"414 query string too long\n")
        hooks = self.server.hooks
        request = Request(
            method=head.method,
            path=path,
            query=parse_qs(query, keep_blank_values=True, max_num_fields=16) if query else {},
            headers=head.headers,
        )
        if hooks.authenticate is not None:
            refusal = hooks.authenticate(request)
            if refusal is not None:
                return refusal
        try:
            return hooks.app.handle(request)
        except Exception as exc:  # one bad request must not take the server down
            log.error("error serving %s: %s", path, type(exc).__name__)
            return Response(500, b"500 internal error\n")

    def _send(
        self, sock: socket.socket, response: Response, version: str, keep: bool, head: bool
    ) -> None:
        extra = self.server.hooks.headers
        lines = [
            f"HTTP/1.1 {response.status} {_PHRASES.get(response.status, 'Unknown')}\r\n"
            f"Server: {SERVER_NAME}\r\nDate: {self.server.date()}\r\n"
            f"Content-Type: {response.content_type}\r\nContent-Length: {response.length}\r\n"
        ]
        lines.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        if extra is not None:
            lines.extend(f"{name}: {value}\r\n" for name, value in extra())
        if not keep:
            lines.append("Connection: close\r\n")
        elif version == "HTTP/1.0":
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        message = "".join(lines).encode("latin-1")
        if head:
            send_all(sock, message)
        else:
            send_all(sock, message, response.body, *response.more)


def _refusal(error: HttpError) -> Response:
    return Response(error.status, f"{error.status} {error.reason}\n".encode())


class DateHeader:
    """The Date header's value, formatted once a second rather than once a response."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last: tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        now = int(self._clock())
        second, text = self._last
        if second != now:
            text = email.utils.formatdate(now, usegmt=True)
            self._last = (now, text)  # one assignment: threads see the old pair or the new
        return text


def send_all(sock: socket.socket, *parts: bytes | FileBytes) -> None:
    """The parts in as few system calls as the socket allows, none copied into a new buffer:
    bytes gathered by `sendmsg`, file-backed parts by `sendfile` (a TLS socket takes the bytes
    of each part one by one)."""
    if isinstance(sock, ssl.SSLSocket):
        for part in parts:
            sock.sendall(part.data if isinstance(part, FileBytes) else part)
        return
    pending: list[memoryview] = []
    for part in parts:
        if isinstance(part, FileBytes) and part.fd is not None:
            _gather(sock, pending, socket.MSG_MORE)
            pending = []
            _sendfile(sock, part.fd, len(part))
        elif part:
            pending.append(memoryview(part.data if isinstance(part, FileBytes) else part))
    _gather(sock, pending)


def _gather(sock: socket.socket, views: list[memoryview], flags: int = 0) -> None:
    while views:
        sent = sock.sendmsg(views, (), flags)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views and sent:
            views[0] = views[0][sent:]


def _sendfile(sock: socket.socket, fd: int, size: int) -> None:
    """All `size` bytes of file `fd`; on a socket with a timeout (non-blocking underneath),
    waiting for room as `socket.sendall` does."""
    offset = 0
    while offset < size:
        try:
            offset += os.sendfile(sock.fileno(), fd, offset, size - offset)
        except BlockingIOError:
            poll = select.poll()
            poll.register(sock, select.POLLOUT)
            timeout = sock.gettimeout()
            if not poll.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError("timed out sending a response") from None


class Server:
    """Serves an `App` on a thread; `stop()` lets in-flight requests finish first."""

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        *,
        ssl_context: TLSContext | None = None,
        authenticate: Authenticator | None = None,
        headers: Callable[[], Sequence[tuple[str, str]]] | None = None,
    ) -> None:
        self._httpd = _Server((host, port), _Hooks(app, authenticate, headers))
        if isinstance(ssl_context, ssl.SSLContext):
            fixed = ssl_context
            self._httpd.tls = lambda: fixed
        elif ssl_context is not None:
            self._httpd.tls = ssl_context
        self._app = app
        # A short poll interval lets stop() return promptly (shutdown waits for the loop to look).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.1,), name="http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._app.start()
        self._thread.start()

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, wait up to `grace` seconds for requests being answered, close."""
        self._httpd.closing = True
        self._httpd.shutdown()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._httpd.active_lock:
                if self._httpd.active == 0:
                    break
            time.sleep(0.02)
        self._httpd.server_close()
        self._app.close()
