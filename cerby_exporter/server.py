"""Sockets around the `App`: a threaded HTTP/1.1 server, so scrapes are served concurrently.

Two details matter for Prometheus. Connections are kept alive, and TCP_NODELAY is set, because a
keep-alive response written in pieces otherwise waits ~40 ms on Nagle's algorithm meeting a
delayed ACK; and the headers and the body go out in one write all the same (`send_all`), which
halves the time to send a large exposition on loopback. On stop, requests already being
answered finish before the process exits.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Final
from urllib.parse import parse_qs

from cerby_exporter import __version__
from cerby_exporter.app import App, Request, Response

log = logging.getLogger(__name__)

MAX_QUERY_BYTES: Final = 2048
"""A job ID is 36 characters; a query string longer than this is not a scrape."""

HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a client has to finish the TLS handshake before its connection is dropped."""

Authenticator = Callable[[Request], Response | None]
"""Returns a response that refuses the request, or None to let it through."""
TLSContext = ssl.SSLContext | Callable[[], ssl.SSLContext]
"""A fixed context, or one asked for each connection (so renewed certificates are used)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold the process open
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, handler, bind_and_activate=False)
        if family == socket.AF_INET6 and address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise
        self.active = 0
        self.active_lock = threading.Lock()
        self.closing = False
        self.tls: Callable[[], ssl.SSLContext] | None = None

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
            connection.settimeout(None)
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


@dataclass(frozen=True, slots=True)
class _Hooks:
    app: App
    authenticate: Authenticator | None
    headers: Callable[[], Sequence[tuple[str, str]]] | None = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"cerby-exporter/{__version__}"
    hooks: ClassVar[_Hooks]
    server: _Server

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        """The Server header names the exporter, not the Python build under it."""
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse_method(self) -> None:
        # A body the request may carry is never read: the connection cannot be reused.
        self.close_connection = True
        self._write(Response(405, b"405 method not allowed\n", headers=(("Allow", "GET, HEAD"),)))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class answers a method it has no `do_` for (PROPFIND, FOO...) with 501."""
        if code == HTTPStatus.NOT_IMPLEMENTED:
            self._refuse_method()
            return
        super().send_error(code, message, explain)

    def _serve(self, head: bool) -> None:
        with self.server.active_lock:
            self.server.active += 1
        try:
            self._write(self._respond(), head=head)
        finally:
            with self.server.active_lock:
                self.server.active -= 1

    def _respond(self) -> Response:
        path, _, query = self.path.partition("?")
        if len(query) > MAX_QUERY_BYTES:
            return Response(414, b"414 query string too long\n")
        request = Request(
            method=self.command,
            path=path,
            query=parse_qs(query, keep_blank_values=True, max_num_fields=16),
            headers={name.lower(): value for name, value in self.headers.items()},
        )
        if self.hooks.authenticate is not None:
            refusal = self.hooks.authenticate(request)
            if refusal is not None:
                return refusal
        try:
            return self.hooks.app.handle(request)
        except Exception as exc:  # one bad request must not take the server down
            log.error("error serving %s: %s", path, type(exc).__name__)
            return Response(500, b"500 internal error\n")

    def _write(self, response: Response, head: bool = False) -> None:
        if self.server.closing:
            self.close_connection = True
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(response.length))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.hooks.headers is not None:
            for name, value in self.hooks.headers():
                self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        buffered: list[bytes] = getattr(self, "_headers_buffer", [])
        if self.request_version != "HTTP/0.9":
            buffered.append(b"\r\n")
        headers = b"".join(buffered)
        buffered.clear()
        send_all(self.connection, headers, *(() if head else (response.body, *response.more)))


def send_all(sock: socket.socket, *parts: bytes) -> None:
    """The parts in as few system calls as the socket allows: gathered by `sendmsg` without
    being joined into a new buffer (a TLS socket takes them one by one)."""
    views = [memoryview(part) for part in parts if part]
    if isinstance(sock, ssl.SSLSocket):
        for view in views:
            sock.sendall(view)
        return
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views and sent:
            views[0] = views[0][sent:]


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
        hooks = _Hooks(app, authenticate, headers)
        handler = type("Handler", (_Handler,), {"hooks": hooks})
        self._httpd = _Server((host, port), handler)
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
