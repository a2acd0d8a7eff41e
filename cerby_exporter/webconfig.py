"""TLS and basic auth for the exporter's own endpoints, from a `--web.config.file`.

The file has the format of the Prometheus exporter toolkit, which the Go exporters read, so an
operator reuses the file (and the knowledge) they already have::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12             # TLS10, TLS11, TLS12 (default), TLS13
    basic_auth_users:
      prometheus: $2b$10$...         # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000

Differences from the Go toolkit, all in the safe direction: Python's TLS cannot accept a client
certificate without verifying it, so `RequestClientCert` and `RequireAnyClientCert` verify the
certificate against `client_ca_file` when one is asked for; and `cipher_suites`,
`curve_preferences` and `client_allowed_sans` are refused rather than silently ignored. One
difference the other way: basic auth does not cover `/healthz` and `/readyz`, which say only "ok"
and "ready", so that Kubernetes probes work without credentials in the pod spec.

The file and the files it names are checked again every second while serving, in a thread: a
renewed certificate, client CA or user list is used for the next connection, without a restart.
The listening socket keeps the context it started with; OpenSSL's server-name callback, which
runs for every ClientHello whether or not the client sent a name (Prometheus scraping by IP
address sends none), hands each new TLS connection the newest one. By then OpenSSL has taken the
verify mode and the protocol versions from the listening context, so a reload that fails, or that
switches TLS on or off or changes `client_auth_type`, `min_version` or `max_version`, keeps the
configuration in force and logs why: those need a restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import bcrypt

from cerby_exporter.watched import Stamp, stamp_of
from cerby_exporter.yamltext import InvalidYaml, yaml_document

log = logging.getLogger(__name__)

TLS_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES: Final = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_ALIASES: Final = {"": "NoClientCert", "RequireClientCert": "RequireAnyClientCert"}
_TLS_KEYS: Final = frozenset(
    {
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
        "prefer_server_cipher_suites",
    }
)
_UNSUPPORTED_TLS_KEYS: Final = frozenset(
    {"cipher_suites", "curve_preferences", "client_allowed_sans"}
)
ALLOWED_HEADERS: Final = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)
"""The response headers the Go toolkit lets `http_server_config.headers` set."""
_BCRYPT_HASH: Final = re.compile(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}")
_UNKNOWN_USER_HASH: Final = b"$2b$10$DTWRVmOE9QErLOoV1QkN4eVRY36H1fBzkrQOIXUeLZGDRur4niFF2"
"""Compared against when the user is unknown, so that costs as long as a known one."""
MAX_PASSWORD_BYTES: Final = 72
"""bcrypt reads no further; like Go's bcrypt, a longer password never matches."""
AUTH_CACHE_SIZE: Final = 1024
OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
"""Answered without basic auth: they say only "ok" or "ready", and Kubernetes probes carry no
credentials. TLS, when configured, still applies to them."""
RECHECK_SECONDS: Final = 1.0


class WebConfigError(ValueError):
    """The web config file is unusable; the message is one line and names the problem."""


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_auth_type: str
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion

    def files(self) -> tuple[Path, ...]:
        ca = (self.client_ca_file,) if self.client_ca_file is not None else ()
        return (self.cert_file, self.key_file, *ca)


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TLSSettings | None
    """None: plain HTTP."""
    users: Mapping[str, bytes]
    """User name to bcrypt hash; empty: no basic auth."""
    headers: tuple[tuple[str, str], ...]


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WebConfigError(f"{where} must be a mapping")
    return value


def _string(section: Mapping[str, Any], key: str, where: str) -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebConfigError(f"{where}.{key} must be a string")
    return value


def parse(text: str, directory: Path) -> WebConfig:
    """Parse and check the file's content; paths in it are relative to `directory`."""
    try:
        document = yaml_document(text)
    except InvalidYaml as exc:
        raise WebConfigError(str(exc)) from None
    top = _mapping(document, "the file")
    unknown = set(top) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"unknown key {sorted(unknown)[0]!r}")
    return WebConfig(
        _parse_tls(_mapping(top.get("tls_server_config"), "tls_server_config"), directory),
        _parse_users(_mapping(top.get("basic_auth_users"), "basic_auth_users")),
        _parse_http(_mapping(top.get("http_server_config"), "http_server_config")),
    )


def _parse_tls(section: dict[str, Any], directory: Path) -> TLSSettings | None:
    where = "tls_server_config"
    unsupported = set(section) & _UNSUPPORTED_TLS_KEYS
    if unsupported:
        raise WebConfigError(
            f"{where}.{sorted(unsupported)[0]} is not supported by cerby-exporter "
            "(remove it; OpenSSL's defaults apply)"
        )
    unknown = set(section) - _TLS_KEYS
    if unknown:
        raise WebConfigError(f"unknown key {where}.{sorted(unknown)[0]}")
    cert = _string(section, "cert_file", where)
    key = _string(section, "key_file", where)
    ca = _string(section, "client_ca_file", where)
    auth = _string(section, "client_auth_type", where)
    if not (cert or key or ca or auth):
        return None
    if not cert:
        raise WebConfigError(f"{where}.cert_file is missing")
    if not key:
        raise WebConfigError(f"{where}.key_file is missing")
    auth = _ALIASES.get(auth, auth)
    if auth not in CLIENT_AUTH_TYPES:
        raise WebConfigError(
            f"{where}.client_auth_type {auth[:40]!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}"
        )
    if ca and auth == "NoClientCert":
        raise WebConfigError(
            f"{where}.client_ca_file is given but client_auth_type asks for no client certificate"
        )
    if not ca and auth in ("RequireAnyClientCert", "VerifyClientCertIfGiven"):
        raise WebConfigError(
            f"{where}.client_auth_type {auth} needs client_ca_file (client certificates are "
            "always verified)"
        )
    if not ca and auth == "RequireAndVerifyClientCert":
        raise WebConfigError(f"{where}.client_auth_type {auth} needs client_ca_file")
    versions = []
    for field, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = _string(section, field, where) or default
        if name not in TLS_VERSIONS:
            raise WebConfigError(f"{where}.{field} must be one of {', '.join(TLS_VERSIONS)}")
        versions.append(TLS_VERSIONS[name])
    if versions[0] > versions[1]:
        raise WebConfigError(f"{where}.min_version is above max_version")
    return TLSSettings(
        cert_file=directory / cert,
        key_file=directory / key,
        client_ca_file=directory / ca if ca else None,
        client_auth_type=auth,
        min_version=versions[0],
        max_version=versions[1],
    )


def _parse_users(section: dict[str, Any]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not user:
            raise WebConfigError("basic_auth_users has an empty user name")
        if not isinstance(hashed, str) or _BCRYPT_HASH.fullmatch(hashed) is None:
            # The value is (meant to be) a hash, but it may be a pasted password: never echo it.
            raise WebConfigError(f"basic_auth_users.{user[:40]} is not a bcrypt hash")
        users[user] = hashed.encode("ascii")
    return users


def _parse_http(section: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    unknown = set(section) - {"http2", "headers"}
    if unknown:
        raise WebConfigError(f"unknown key http_server_config.{sorted(unknown)[0]}")
    allowed = {name.lower(): name for name in ALLOWED_HEADERS}
    headers = []
    for name, value in _mapping(section.get("headers"), "http_server_config.headers").items():
        canonical = allowed.get(name.lower())
        if canonical is None:
            raise WebConfigError(
                f"http_server_config.headers: {name[:40]!r} is not one of "
                + ", ".join(ALLOWED_HEADERS)
            )
        if not isinstance(value, str) or not value.isprintable():
            raise WebConfigError(f"http_server_config.headers.{canonical} must be one line of text")
        headers.append((canonical, value))
    return tuple(headers)


class _EncryptedKey(Exception):
    pass


def _refuse_passphrase() -> bytes:
    """Without a callback OpenSSL would ask for the passphrase on the terminal: at start that
    hangs a container, in a reload it blocks a thread for good."""
    raise _EncryptedKey


def build_ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    """The server-side context; raises `WebConfigError` when a file is missing or does not fit."""
    for path in tls.files():
        if not path.is_file():
            raise WebConfigError(f"{path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    context.maximum_version = tls.max_version
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_passphrase)
    except _EncryptedKey:
        raise WebConfigError(
            "key_file is encrypted (cerby-exporter takes an unencrypted key, as the Go toolkit "
            "does)"
        ) from None
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise WebConfigError(f"cannot load cert_file/key_file ({reason})") from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
            raise WebConfigError(f"cannot load client_ca_file ({reason})") from None
        context.verify_mode = (
            ssl.CERT_OPTIONAL
            if tls.client_auth_type in ("RequestClientCert", "VerifyClientCertIfGiven")
            else ssl.CERT_REQUIRED
        )
    return context


def load(path: Path) -> tuple[WebConfig, ssl.SSLContext | None]:
    """Read, parse and check the file, certificates included: for start-up and reloads."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WebConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise WebConfigError(f"{path}: cannot read ({reason})") from None
    try:
        config = parse(text, path.parent)
    except WebConfigError as exc:
        raise WebConfigError(f"{path}: {exc}") from None
    context = build_ssl_context(config.tls) if config.tls is not None else None
    return config, context


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes.

    bcrypt is slow on purpose, too slow to pay on every scrape, so a success is remembered. The
    memory holds neither password nor a plain hash of it: the cache key is an HMAC under a random
    per-process key of the user, the password and the hash it matched (so a changed hash forgets
    it). bcrypt runs in a thread, never on the event loop. Failures are never cached and run one
    at a time, so guessing stays as slow as bcrypt makes it and a flood of bad passwords cannot
    take every core.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users: Mapping[str, bytes] = dict(users)
        self._users = tuple((name.encode("utf-8"), hashed) for name, hashed in users.items())
        self._secret = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_slot = asyncio.Semaphore(1)

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    async def check(self, user: str, password: str) -> bool:
        name = user.encode("utf-8", "surrogateescape")
        secret = password.encode("utf-8", "surrogateescape")
        hashed = None
        for known, known_hash in self._users:  # every name compared in constant time
            if hmac.compare_digest(known, name):
                hashed = known_hash
        key = hmac.new(
            self._secret,
            b"\0".join((name, secret, hashed or b"")),
            hashlib.sha256,
        ).digest()
        if hashed is not None and self._remembered(key):
            return True
        too_long = len(secret) > MAX_PASSWORD_BYTES
        async with self._bcrypt_slot:
            if hashed is not None and self._remembered(key):
                return True  # the same credentials were checked while this request waited
            matched = await asyncio.to_thread(
                bcrypt.checkpw,
                secret[:MAX_PASSWORD_BYTES],
                hashed if hashed is not None else _UNKNOWN_USER_HASH,
            )
        if not matched or hashed is None or too_long:
            return False
        with self._cache_lock:
            self._cache[key] = None
            if len(self._cache) > AUTH_CACHE_SIZE:
                self._cache.popitem(last=False)
        return True

    def _remembered(self, key: bytes) -> bool:
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
        return False

    async def allows(self, path: str, authorization: str) -> bool:
        """True if a request for `path` with this `Authorization` header may go on."""
        if not self._users or path in OPEN_PATHS:
            return True
        credentials = _basic_credentials(authorization)
        return credentials is not None and await self.check(*credentials)


def _stamp(paths: tuple[Path, ...]) -> tuple[Stamp | None, ...]:
    return tuple(stamp_of(path) for path in paths)


class WebConfigSource:
    """The web config in force, reloaded when the file or a file it names changes.

    Whether TLS is on, which client certificates it asks for and which TLS versions it takes are
    fixed at start (the listening socket was opened for them); a reload that would change them
    is refused. Raises `WebConfigError` at construction if the file is unusable.
    """

    def __init__(self, path: Path, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self._path = path
        self._recheck = recheck_seconds
        config, context = load(path)
        self._config = config
        self._context = context
        self._listening = context
        if context is not None:
            context.sni_callback = self._choose_context
        self._auth = BasicAuth(config.users)
        self._stamps = _stamp(self._watched(config))
        self._failed_stamps: tuple[Stamp | None, ...] | None = None

    @property
    def tls_enabled(self) -> bool:
        return self._context is not None

    @property
    def basic_auth_enabled(self) -> bool:
        return self._auth.enabled

    @property
    def auth(self) -> BasicAuth:
        return self._auth

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._config.headers

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context to listen with; each handshake is then handed the newest one."""
        return self._listening

    def _choose_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _base: ssl.SSLContext
    ) -> None:
        """OpenSSL's server-name callback, run for every ClientHello, with or without SNI."""
        newest = self._context
        if newest is not None and newest is not connection.context:
            connection.context = newest

    async def watch(self) -> None:
        """Check for changes every `recheck_seconds` until cancelled. A surprise is logged and
        the watching goes on: a task that died would stop certificate renewal silently."""
        while True:
            await asyncio.sleep(self._recheck)
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception as exc:
                log.error("web config check failed, will try again: %s", type(exc).__name__)

    def _watched(self, config: WebConfig) -> tuple[Path, ...]:
        return (self._path, *(config.tls.files() if config.tls is not None else ()))

    def reload_if_changed(self) -> None:
        """Blocking (stat, read, parse, load certificates): run it in a thread."""
        stamps = _stamp(self._watched(self._config))
        if stamps in (self._stamps, self._failed_stamps):
            return
        try:
            config, context = load(self._path)
            if (context is None) != (self._context is None):
                raise WebConfigError("switching TLS on or off needs a restart")
            old, new = self._config.tls, config.tls
            if old is not None and new is not None:
                for field in ("client_auth_type", "min_version", "max_version"):
                    if getattr(old, field) != getattr(new, field):
                        raise WebConfigError(f"changing {field} needs a restart")
        except WebConfigError as exc:
            self._failed_stamps = stamps
            log.warning("web config not reloaded, keeping the one in force: %s", exc)
            return
        self._config = config
        self._context = context
        if config.users != self._auth.users:
            self._auth = BasicAuth(config.users)
        self._stamps = _stamp(self._watched(config))
        self._failed_stamps = None
        log.info("web config reloaded from %s", self._path)
