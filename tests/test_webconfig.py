"""TLS and basic auth from a web config file, with real certificates made here and real HTTPS
clients on loopback: what the Go exporters' operators expect, and nothing weaker."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from cerby_exporter import cli, webconfig
from cerby_exporter.settings import Settings
from cerby_exporter.simulator import Simulator
from cerby_exporter.webconfig import BasicAuth, WebConfigError, WebConfigSource, parse
from tests.support import (
    API_KEY,
    FINISHED,
    ExporterProcess,
    Running,
    issue,
    parse_samples,
    settings_for,
    start_exporter,
    value,
)

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
Serve = Callable[[Path | WebConfigSource], Running]
RELOAD_WAIT = 10.0
"""Seconds to poll for a reload: the watch task looks once a second, on a shared machine."""


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, two server certificates for 127.0.0.1 and client certificates, one from another
    CA."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def der(self, name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.path(f"{name}.crt").read_text())

    def client_context(self, cert: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.path("ca.crt"))
        if cert is not None:
            context.load_cert_chain(self.path(f"{cert}.crt"), self.path(f"{cert}.key"))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = issue(directory, "ca", None)
    rogue_ca = issue(directory, "rogue-ca", None)
    for name in ("server", "server2"):
        issue(directory, name, ca, ExtendedKeyUsageOID.SERVER_AUTH)
    issue(directory, "encrypted", ca, ExtendedKeyUsageOID.SERVER_AUTH, passphrase=b"secret")
    issue(directory, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    issue(directory, "rogue", rogue_ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(directory)


# --- helpers ------------------------------------------------------------------------------------


def write_config(path: Path, text: str) -> Path:
    """Write as an editor that saves atomically does: the new file renamed over the old."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    staging.replace(path)
    return path


def tls_config(pki: Pki, extra: str = "", users: str = "") -> str:
    text = (
        "tls_server_config:\n"
        f"  cert_file: {pki.path('server.crt')}\n"
        f"  key_file: {pki.path('server.key')}\n" + extra
    )
    if users:
        text += "basic_auth_users:\n" + users
    return text


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def eventually(check: Callable[[], bool], timeout: float = RELOAD_WAIT) -> bool:
    """Poll `check` until it holds or `timeout` passes; the last answer."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return check()
        time.sleep(0.05)
    return True


def served_certificate(pki: Pki, port: int, server_name: str | None = None) -> bytes:
    """The DER certificate the server on `port` presents. With no `server_name` the client sends
    no SNI at all, as Prometheus does when it scrapes an IP address; the chain is still
    verified."""
    context = pki.client_context()
    if server_name is None:
        context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def client_hello() -> bytes:
    """A real ClientHello, as the first bytes a TLS client sends."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- the file format ----------------------------------------------------------------------------


def test_parse_the_toolkit_format(tmp_path: Path) -> None:
    config = parse(
        "tls_server_config:\n"
        "  cert_file: certs/server.crt\n"
        "  key_file: /abs/server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: ca.crt\n"
        "  min_version: TLS13\n"
        "  prefer_server_cipher_suites: true\n"
        "http_server_config:\n"
        "  http2: false\n"
        "  headers:\n"
        "    strict-transport-security: max-age=31536000\n"
        "basic_auth_users:\n"
        f"  prometheus: {HASH}\n"
        "  grafana: $2y$10$AbCdEfGhIjKlMnOpQrStUuAbCdEfGhIjKlMnOpQrStUvWxYz01234\n",
        tmp_path,
    )
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "certs/server.crt"
    assert config.tls.key_file == Path("/abs/server.key")
    assert config.tls.client_ca_file == tmp_path / "ca.crt"
    assert config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert config.tls.min_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.max_version == ssl.TLSVersion.TLSv1_3
    assert set(config.users) == {"prometheus", "grafana"}
    assert config.users["prometheus"] == HASH.encode()
    assert config.headers == (("Strict-Transport-Security", "max-age=31536000"),)


@pytest.mark.parametrize(
    "text",
    ["", "{}\n", "tls_server_config: {}\nbasic_auth_users: {}\n", "tls_server_config:\n"],
)
def test_empty_sections_mean_plain_http_without_auth(text: str, tmp_path: Path) -> None:
    config = parse(text, tmp_path)
    assert config.tls is None
    assert dict(config.users) == {}
    assert config.headers == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: [\n", "not valid YAML at line 2"),
        ("- a\n", "the file must be a mapping"),
        ("tls_config: {}\n", "unknown key 'tls_config'"),
        ("tls_server_config:\n  cert_file: a\n", "tls_server_config.key_file is missing"),
        ("tls_server_config:\n  key_file: a\n", "tls_server_config.cert_file is missing"),
        ("tls_server_config:\n  cert: a\n", "unknown key tls_server_config.cert"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Always\n",
            "client_auth_type 'Always' is not one of NoClientCert",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
            "client_ca_file is given but client_auth_type asks for no client certificate",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "RequireAndVerifyClientCert needs client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n",
            "min_version must be one of TLS10, TLS11, TLS12, TLS13",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n"
            "  max_version: TLS12\n",
            "min_version is above max_version",
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [X]\n",
            "cipher_suites is not supported",
        ),
        ("basic_auth_users:\n  alice: 42\n", "basic_auth_users.alice is not a bcrypt hash"),
        ("basic_auth_users: [alice]\n", "basic_auth_users must be a mapping"),
        ("http_server_config:\n  headers:\n    Server: x\n", "'Server' is not one of"),
        ("http_server_config:\n  timeout: 3\n", "unknown key http_server_config.timeout"),
    ],
)
def test_a_bad_file_is_one_clear_error(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(WebConfigError) as caught:
        parse(text, tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_password_pasted_in_place_of_a_hash_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError) as caught:
        parse("basic_auth_users:\n  alice: hunter2-plaintext\n", tmp_path)
    assert "hunter2" not in str(caught.value)
    assert str(caught.value) == "basic_auth_users.alice is not a bcrypt hash"


def test_certificate_problems_are_found_at_start(pki: Pki, tmp_path: Path) -> None:
    missing = write_config(
        tmp_path / "missing.yml",
        f"tls_server_config:\n  cert_file: nope.crt\n  key_file: {pki.path('server.key')}\n",
    )
    with pytest.raises(WebConfigError, match=r"nope\.crt: no such file"):
        webconfig.load(missing)
    mismatch = write_config(
        tmp_path / "mismatch.yml",
        "tls_server_config:\n"
        f"  cert_file: {pki.path('server.crt')}\n  key_file: {pki.path('client.key')}\n",
    )
    with pytest.raises(WebConfigError, match="cannot load cert_file/key_file"):
        webconfig.load(mismatch)


def test_an_encrypted_key_is_refused_not_prompted_for(pki: Pki, tmp_path: Path) -> None:
    """OpenSSL's fallback is a passphrase prompt on the terminal, which would hang a start or,
    worse, a reload thread for good."""
    encrypted = write_config(
        tmp_path / "encrypted.yml",
        "tls_server_config:\n"
        f"  cert_file: {pki.path('encrypted.crt')}\n  key_file: {pki.path('encrypted.key')}\n",
    )
    with pytest.raises(WebConfigError, match="key_file is encrypted"):
        webconfig.load(encrypted)


def test_cli_exits_2_with_one_line_for_a_bad_web_config(
    isolated_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERBY_API_KEY", API_KEY)
    bad = write_config(isolated_env / "web.yml", "basic_auth_users:\n  alice: plain\n")
    code = cli.main(
        [
            "--api-url",
            "https://acme.cerby.com/api/v1",
            "--job-ids",
            FINISHED,
            "--web.config.file",
            str(bad),
            "--check-config",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cerby-exporter: invalid --web.config.file / CERBY_WEB_CONFIG_FILE")
    assert "basic_auth_users.alice is not a bcrypt hash" in lines[0]


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    example = doc.split("## Web config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse(example, tmp_path)
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "tls.crt"
    assert config.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert config.tls.client_ca_file == tmp_path / "client-ca.crt"
    assert set(config.users) == {"prometheus"}
    assert bcrypt.checkpw(b"example-only", config.users["prometheus"])
    assert dict(config.headers)["X-Content-Type-Options"] == "nosniff"


# --- basic auth, without a server ---------------------------------------------------------------


def test_basic_auth_allows_only_the_right_credentials() -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})

    async def verdicts() -> list[bool]:
        good = basic("prometheus", PASSWORD)["Authorization"]
        headers = [
            good,
            basic("prometheus", "wrong")["Authorization"],
            basic("nobody", PASSWORD)["Authorization"],
            "Basic !!!not-base64!!!",
            "Bearer " + PASSWORD,
            "Basic " + base64.b64encode(b"no-colon").decode(),
            "",
        ]
        answers = [await auth.allows("/metrics", header) for header in headers]
        answers += [await auth.allows(path, "") for path in ("/healthz", "/readyz", "/")]
        return answers

    assert asyncio.run(verdicts()) == [True, *[False] * 6, True, True, False]
    assert asyncio.run(BasicAuth({}).allows("/metrics", "")) is True


def test_successes_are_cached_failures_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = BasicAuth({"prometheus": HASH.encode()})
    long_hash = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(4))
    long_auth = BasicAuth({"u": long_hash})

    async def checks() -> list[tuple[bool, int]]:
        seen = []
        for checker, user, password in (
            (auth, "prometheus", PASSWORD),
            (auth, "prometheus", PASSWORD),
            (auth, "prometheus", PASSWORD),
            (auth, "prometheus", "guess"),
            (auth, "prometheus", "guess"),
            # An unknown user costs a bcrypt comparison too (no timing difference), never passes.
            (auth, "mallory", PASSWORD),
            # Over bcrypt's 72 bytes a password never matches, even if its first 72 bytes do.
            (long_auth, "u", "x" * 72),
            (long_auth, "u", "x" * 73),
        ):
            seen.append((await checker.check(user, password), len(calls)))
        return seen

    assert asyncio.run(checks()) == [
        (True, 1),
        (True, 1),
        (True, 1),
        (False, 2),
        (False, 3),
        (False, 4),
        (True, 5),
        (False, 6),
    ]
    assert calls[5] != HASH.encode()
    # The cache holds no password: only HMAC digests under a per-process key.
    cached = list(auth._cache)
    assert len(cached) == 1
    assert PASSWORD.encode() not in cached[0]
    assert len(cached[0]) == 32


# --- over real sockets --------------------------------------------------------------------------


@pytest.fixture
def serve(simulator: Simulator, isolated_env: Path) -> Iterator[Serve]:
    """Serve the exporter with the web config at a path; watched as the CLI watches it."""
    started: list[Running] = []

    def start(config: Path | WebConfigSource) -> Running:
        source = config if isinstance(config, WebConfigSource) else WebConfigSource(config)
        running = start_exporter(Settings(**settings_for(simulator)), web_config=source)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
    logging.getLogger().handlers.clear()


def test_tls_and_basic_auth_through_the_command_line(pki: Pki, tmp_path: Path) -> None:
    """The real CLI with --web.config.file: HTTPS, a wrong password 401, the right one 200."""
    config = write_config(
        tmp_path / "web.yml",
        tls_config(pki, users=f"  prometheus: {HASH}\n")
        + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    )
    args = ["--demo", "--web.config.file", str(config)]
    with ExporterProcess(args, tmp_path, scheme="https") as exporter:
        exporter.wait_listening()
        with httpx.Client(verify=pki.client_context(), timeout=10) as client:
            # Ready once the first collection has run.
            assert eventually(lambda: client.get(exporter.url + "/readyz").status_code == 200, 20)
            good = client.get(exporter.url + "/metrics", headers=basic("prometheus", PASSWORD))
            assert good.status_code == 200
            assert value(parse_samples(good.text), "cerby_up") == 1
            assert good.headers["X-Frame-Options"] == "deny"
            wrong = client.get(exporter.url + "/metrics", headers=basic("prometheus", "wrong"))
            assert wrong.status_code == 401
            assert wrong.headers["WWW-Authenticate"].startswith("Basic")
            assert "cerby_" not in wrong.text
            assert client.get(exporter.url + "/metrics").status_code == 401
            assert client.get(exporter.url + "/").status_code == 401
            assert client.get(exporter.url + f"/probe?target={FINISHED}").status_code == 401
            # Probes need no credentials, and learn nothing but "ok" and "ready".
            assert client.get(exporter.url + "/healthz").text == "ok\n"
            assert client.get(exporter.url + "/readyz").text == "ready\n"
        # Plain HTTP to the TLS port gets no metrics.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5)
        # A client that does not trust the CA refuses the server.
        with pytest.raises(httpx.ConnectError):
            httpx.get(exporter.url + "/healthz", timeout=5)
        assert exporter.terminate() == 0
    assert "TLS on, basic auth on" in exporter.stderr()
    assert PASSWORD not in exporter.stderr() + exporter.stdout()


def test_tls_is_served(pki: Pki, tmp_path: Path, serve: Serve) -> None:
    running = serve(write_config(tmp_path / "web.yml", tls_config(pki)))
    assert running.url.startswith("https://")
    with httpx.Client(verify=pki.client_context(), timeout=10) as client:
        answer = client.get(running.url + "/healthz")
        assert answer.status_code == 200
        assert answer.text == "ok\n"
        assert eventually(lambda: client.get(running.url + "/readyz").status_code == 200)
        metrics = client.get(running.url + "/metrics")
        assert metrics.status_code == 200
        assert value(parse_samples(metrics.text), "cerby_up") == 1
    assert served_certificate(pki, running.port, "localhost") == pki.der("server")
    assert served_certificate(pki, running.port) == pki.der("server")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{running.port}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError):  # the system CAs do not know ours
        httpx.get(running.url + "/healthz", timeout=5)


def test_client_certificates_required_and_verified(pki: Pki, tmp_path: Path, serve: Serve) -> None:
    config = write_config(
        tmp_path / "web.yml",
        tls_config(
            pki,
            "  client_auth_type: RequireAndVerifyClientCert\n"
            f"  client_ca_file: {pki.path('ca.crt')}\n",
        ),
    )
    url = serve(config).url + "/healthz"
    with httpx.Client(verify=pki.client_context("client"), timeout=5) as client:
        answer = client.get(url)
        assert answer.status_code == 200
        assert answer.text == "ok\n"
    for refused in (pki.client_context(), pki.client_context("rogue")):
        with pytest.raises(httpx.TransportError), httpx.Client(verify=refused, timeout=5) as c:
            c.get(url)


def test_client_certificate_verified_if_given(pki: Pki, tmp_path: Path, serve: Serve) -> None:
    config = write_config(
        tmp_path / "web.yml",
        tls_config(
            pki,
            "  client_auth_type: VerifyClientCertIfGiven\n"
            f"  client_ca_file: {pki.path('ca.crt')}\n",
        ),
    )
    url = serve(config).url + "/healthz"
    for accepted in (pki.client_context(), pki.client_context("client")):
        assert httpx.get(url, verify=accepted, timeout=5).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=pki.client_context("rogue"), timeout=5)


def tls_version_with(pki: Pki, port: int, highest: ssl.TLSVersion) -> str | None:
    """The version a client that offers at most `highest` ends up with."""
    context = pki.client_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = highest
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version()


def test_min_version_is_enforced_and_fixed_until_a_restart(
    pki: Pki, tmp_path: Path, serve: Serve
) -> None:
    config = write_config(tmp_path / "web.yml", tls_config(pki, "  min_version: TLS13\n"))
    running = serve(config)
    assert tls_version_with(pki, running.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        tls_version_with(pki, running.port, ssl.TLSVersion.TLSv1_2)
    # OpenSSL has fixed the versions before a reloaded context could take over, so a change is
    # refused out loud rather than written down and silently not applied.
    write_config(config, tls_config(pki, "  min_version: TLS12\n"))
    assert eventually(lambda: "changing min_version needs a restart" in running.log.getvalue())
    with pytest.raises(ssl.SSLError):
        tls_version_with(pki, running.port, ssl.TLSVersion.TLSv1_2)


def test_basic_auth_over_plain_http(tmp_path: Path, serve: Serve) -> None:
    source = WebConfigSource(
        write_config(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {HASH}\n")
    )
    assert not source.tls_enabled
    assert source.basic_auth_enabled
    running = serve(source)
    assert running.url.startswith("http://")
    with httpx.Client(base_url=running.url, timeout=10) as client:
        for path in ("/metrics", "/", f"/probe?target={FINISHED}"):
            for headers in ({}, basic("prometheus", "wrong"), basic("nobody", PASSWORD)):
                refused = client.get(path, headers=headers)
                assert refused.status_code == 401, (path, headers)
                assert refused.headers["WWW-Authenticate"] == (
                    'Basic realm="cerby-exporter", charset="UTF-8"'
                )
                assert refused.text == "401 unauthorized\n"
        assert client.get("/healthz").text == "ok\n"
        assert eventually(lambda: client.get("/readyz").text == "ready\n")
        good = client.get("/metrics", headers=basic("prometheus", PASSWORD))
        assert good.status_code == 200
        assert value(parse_samples(good.text), "cerby_up") == 1
        assert client.get("/", headers=basic("prometheus", PASSWORD)).status_code == 200
        probe = client.get(f"/probe?target={FINISHED}", headers=basic("prometheus", PASSWORD))
        assert probe.status_code == 200


def test_configured_headers_are_on_every_answer(pki: Pki, tmp_path: Path, serve: Serve) -> None:
    config = write_config(
        tmp_path / "web.yml",
        tls_config(pki, users=f"  prometheus: {HASH}\n") + "http_server_config:\n  headers:\n"
        "    Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: deny\n",
    )
    running = serve(config)
    auth = basic("prometheus", PASSWORD)
    with httpx.Client(base_url=running.url, verify=pki.client_context(), timeout=10) as client:
        answers = {
            "metrics": client.get("/metrics", headers=auth),
            "probe": client.get(f"/probe?target={FINISHED}", headers=auth),
            "landing": client.get("/", headers=auth),
            "healthz": client.get("/healthz"),
            "unauthorized": client.get("/metrics"),
            "not found": client.get("/nope", headers=auth),
            "not allowed": client.post("/metrics", headers=auth),
        }
    assert {name: answer.status_code for name, answer in answers.items()} == {
        "metrics": 200,
        "probe": 200,
        "landing": 200,
        "healthz": 200,
        "unauthorized": 401,
        "not found": 404,
        "not allowed": 405,
    }
    for name, answer in answers.items():
        assert answer.headers.get("Strict-Transport-Security") == "max-age=31536000", name
        assert answer.headers.get_list("X-Frame-Options") == ["deny"], name
        assert answer.headers["Server"].startswith("cerby-exporter/"), name


def test_a_changed_user_list_is_used_and_a_bad_edit_is_not(tmp_path: Path, serve: Serve) -> None:
    config = write_config(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {HASH}\n")
    running = serve(config)
    new_password = "a new password"
    new_hash = bcrypt.hashpw(new_password.encode(), bcrypt.gensalt(4)).decode()
    with httpx.Client(base_url=running.url, timeout=10) as client:

        def status(password: str) -> int:
            return client.get("/", headers=basic("prometheus", password)).status_code

        assert status(PASSWORD) == 200
        assert status(new_password) == 401
        write_config(config, f"basic_auth_users:\n  prometheus: {new_hash}\n")
        assert eventually(lambda: status(new_password) == 200)
        assert status(PASSWORD) == 401
        # A broken edit is refused, says why, and the configuration in force stays.
        write_config(config, "basic_auth_users:\n  prometheus: nope\n")
        assert eventually(lambda: "web config not reloaded" in running.log.getvalue())
        assert "basic_auth_users.prometheus is not a bcrypt hash" in running.log.getvalue()
        assert status(new_password) == 200
        assert status(PASSWORD) == 401


def test_a_certificate_renewed_in_place_is_served_without_a_restart(
    pki: Pki, tmp_path: Path, serve: Serve
) -> None:
    """Renewal as cert-manager or an operator does it: new files renamed over the old."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.path("server.crt").read_bytes())
    key.write_bytes(pki.path("server.key").read_bytes())
    config = write_config(
        tmp_path / "web.yml", "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
    )
    running = serve(config)
    assert served_certificate(pki, running.port, "localhost") == pki.der("server")
    for path, source in ((key, "server2.key"), (cert, "server2.crt")):
        staging = path.with_name(path.name + ".new")
        staging.write_bytes(pki.path(source).read_bytes())
        staging.replace(path)
    renewed = pki.der("server2")
    assert eventually(lambda: served_certificate(pki, running.port, "localhost") == renewed)
    assert served_certificate(pki, running.port) == renewed
    with httpx.Client(verify=pki.client_context(), timeout=10) as client:
        assert client.get(running.url + "/healthz").status_code == 200


def test_a_renewed_certificate_reaches_clients_that_send_no_server_name(
    pki: Pki, tmp_path: Path, serve: Serve
) -> None:
    """Prometheus scraping a pod IP sends no SNI. The renewal rides on OpenSSL's server-name
    callback, so it must run, with no name, for those handshakes too."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(pki.path("server.crt").read_bytes())
    key.write_bytes(pki.path("server.key").read_bytes())
    source = WebConfigSource(
        write_config(
            tmp_path / "web.yml", "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        )
    )
    listening = source.ssl_context()
    assert listening is not None
    choose = listening.sni_callback
    assert choose is not None
    names: list[str | None] = []

    def recording(
        connection: ssl.SSLObject, name: str | None, context: ssl.SSLContext
    ) -> int | None:
        names.append(name)
        # typeshed says the name is a str; without SNI it is None, the very case tested here.
        return choose(connection, name, context)  # type: ignore[arg-type]

    listening.sni_callback = recording
    running = serve(source)
    assert served_certificate(pki, running.port) == pki.der("server")
    assert names == [None]
    cert.write_bytes(pki.path("server2.crt").read_bytes())  # rewritten in place, this time
    key.write_bytes(pki.path("server2.key").read_bytes())
    assert eventually(lambda: served_certificate(pki, running.port) == pki.der("server2"))
    assert set(names) == {None}
    assert len(names) >= 2


def kubelet_publish(volume: Path, files: dict[str, bytes], generation: int) -> None:
    """Write `files` as the kubelet updates a Secret volume (the Helm chart's web config): into
    a new directory, switched to by renaming the `..data` symlink, each name a symlink through
    `..data`. No file the exporter names is ever written in place."""
    target = volume / f"..2026_11_24_00_00_0{generation}.000000001"
    target.mkdir()
    for name, content in files.items():
        (target / name).write_bytes(content)
    staging = volume / "..data_tmp"
    staging.symlink_to(target.name)
    staging.replace(volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


def test_renewal_through_a_kubernetes_secret_volume(pki: Pki, tmp_path: Path, serve: Serve) -> None:
    volume = tmp_path / "web"
    volume.mkdir()
    config = b"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"

    def secret(name: str) -> dict[str, bytes]:
        return {
            "web-config.yml": config,
            "tls.crt": pki.path(f"{name}.crt").read_bytes(),
            "tls.key": pki.path(f"{name}.key").read_bytes(),
        }

    kubelet_publish(volume, secret("server"), 1)
    running = serve(volume / "web-config.yml")
    assert served_certificate(pki, running.port) == pki.der("server")
    kubelet_publish(volume, secret("server2"), 2)
    assert eventually(lambda: served_certificate(pki, running.port) == pki.der("server2"))
    assert served_certificate(pki, running.port, "localhost") == pki.der("server2")


def test_handshakes_that_never_finish_do_not_hold_up_a_scrape(
    pki: Pki, tmp_path: Path, serve: Serve
) -> None:
    """Handshakes are driven by the event loop as bytes arrive: a client that never says hello,
    or stops half-way through its hello, waits alone."""
    running = serve(write_config(tmp_path / "web.yml", tls_config(pki)))
    hello = client_hello()
    assert len(hello) > 100
    hanging: list[socket.socket] = []
    with httpx.Client(base_url=running.url, verify=pki.client_context(), timeout=10) as warm:
        assert eventually(lambda: warm.get("/readyz").status_code == 200)
        assert warm.get("/metrics").status_code == 200
    try:
        for _ in range(50):
            hanging.append(socket.create_connection(("127.0.0.1", running.port), timeout=5))
            half = socket.create_connection(("127.0.0.1", running.port), timeout=5)
            half.sendall(hello[: len(hello) // 2])
            hanging.append(half)
        time.sleep(0.2)  # let the server accept them all and start waiting on them
        started = time.monotonic()
        with httpx.Client(verify=pki.client_context(), timeout=10) as client:
            answer = client.get(running.url + "/metrics")
        elapsed = time.monotonic() - started
        assert answer.status_code == 200
        assert value(parse_samples(answer.text), "cerby_up") == 1
        assert elapsed < 1.0
        for sock in hanging:  # still open, still unanswered: they really were hanging
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in hanging:
            sock.close()


def test_bcrypt_runs_off_the_event_loop(tmp_path: Path, serve: Serve) -> None:
    slow_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()
    running = serve(
        write_config(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {slow_hash}\n")
    )
    assert httpx.get(running.url + "/healthz", timeout=10).status_code == 200
    answered: list[tuple[int, float]] = []

    def guess(n: int) -> None:
        answer = httpx.get(running.url + "/", headers=basic("prometheus", f"guess {n}"), timeout=30)
        answered.append((answer.status_code, time.monotonic()))

    guesses = [threading.Thread(target=guess, args=(n,)) for n in range(5)]
    for thread in guesses:
        thread.start()
    time.sleep(0.2)  # the guesses are in, and being checked one at a time
    started = time.monotonic()
    health = httpx.get(running.url + "/healthz", timeout=10)
    done = time.monotonic()
    for thread in guesses:
        thread.join()
    assert health.text == "ok\n"
    assert done - started < 0.5
    assert [code for code, _ in answered] == [401] * 5
    assert max(at for _, at in answered) > done  # the checks were still running meanwhile


def test_many_concurrent_scrapes_pay_for_bcrypt_once(
    tmp_path: Path, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that wait for the first check of the same credentials take its result."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    slow_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    running = serve(
        write_config(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {slow_hash}\n")
    )
    assert httpx.get(running.url + "/", timeout=10).status_code == 401
    codes: list[int] = []

    def scrape() -> None:
        with httpx.Client(timeout=30) as client:
            codes.extend(
                client.get(running.url + "/", headers=basic("prometheus", PASSWORD)).status_code
                for _ in range(20)
            )

    threads = [threading.Thread(target=scrape) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200] * 100
    assert calls == [slow_hash.encode()]
