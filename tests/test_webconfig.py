"""TLS and basic auth from a web config file, with real certificates made here by `openssl` and a
real HTTPS client: what the Go exporters' operators expect, and nothing weaker."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest

from cerby_exporter import cli, webconfig
from cerby_exporter.app import Request, create_app
from cerby_exporter.logs import Redactor
from cerby_exporter.server import Server
from cerby_exporter.settings import Settings
from cerby_exporter.simulator import Simulator
from cerby_exporter.webconfig import BasicAuth, WebConfigError, WebConfigSource, parse
from tests.e2e import ExporterProcess
from tests.support import API_KEY, FINISHED, settings_for

PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and client certificates, one from another CA."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def client_context(self, cert: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.path("ca.crt"))
        if cert is not None:
            context.load_cert_chain(self.path(f"{cert}.crt"), self.path(f"{cert}.key"))
        return context


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


def make_leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_ca(directory, "rogue-ca")
    make_leaf(directory, "server", "ca", SERVER_EXT)
    make_leaf(directory, "server2", "ca", SERVER_EXT)
    make_leaf(directory, "client", "ca", CLIENT_EXT)
    make_leaf(directory, "rogue", "rogue-ca", CLIENT_EXT)
    return Pki(directory)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
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


# --- basic auth -------------------------------------------------------------------------------


def test_basic_auth_answers_401_with_a_challenge() -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})
    good = basic("prometheus", PASSWORD)["Authorization"]
    assert auth(Request("GET", "/metrics", headers={"authorization": good})) is None
    for header in (
        basic("prometheus", "wrong")["Authorization"],
        basic("nobody", PASSWORD)["Authorization"],
        "Basic !!!not-base64!!!",
        "Bearer " + PASSWORD,
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "",
    ):
        refusal = auth(Request("GET", "/metrics", headers={"authorization": header}))
        assert refusal is not None
        assert refusal.status == 401
        assert dict(refusal.headers)["WWW-Authenticate"].startswith('Basic realm="cerby-exporter"')


def test_successes_are_cached_failures_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert auth.check("prometheus", PASSWORD)
    assert auth.check("prometheus", PASSWORD)
    assert auth.check("prometheus", PASSWORD)
    assert len(calls) == 1
    assert not auth.check("prometheus", "guess")
    assert not auth.check("prometheus", "guess")
    assert len(calls) == 3
    # An unknown user costs a bcrypt comparison too (no timing difference), and never passes.
    assert not auth.check("mallory", PASSWORD)
    assert len(calls) == 4
    assert calls[-1] != HASH.encode()
    # Over bcrypt's 72 bytes a password never matches, even if its first 72 bytes do.
    long_hash = bcrypt.hashpw(b"x" * 72, bcrypt.gensalt(4))
    long_auth = BasicAuth({"u": long_hash})
    assert long_auth.check("u", "x" * 72)
    assert not long_auth.check("u", "x" * 73)
    # The cache holds no password: only HMAC digests under a per-process key.
    cached = list(auth._cache)
    assert len(cached) == 1
    assert PASSWORD.encode() not in cached[0]
    assert len(cached[0]) == 32


# --- over real sockets --------------------------------------------------------------------------


@pytest.fixture
def serve(
    simulator: Simulator, isolated_env: Path
) -> Iterator[Callable[[Path], tuple[Server, WebConfigSource]]]:
    servers: list[Server] = []

    def start(config: Path) -> tuple[Server, WebConfigSource]:
        source = WebConfigSource(config, recheck_seconds=0.05)
        app = create_app(Settings(**settings_for(simulator)), Redactor())
        server = Server(
            app,
            "127.0.0.1",
            0,
            ssl_context=source.ssl_context if source.tls_enabled else None,
            authenticate=source.authenticate,
            headers=source.headers,
        )
        server.start()
        servers.append(server)
        return server, source

    yield start
    for server in servers:
        server.stop(grace=1)


def test_tls_and_basic_auth_through_the_command_line(pki: Pki, tmp_path: Path) -> None:
    """The real CLI with --web.config.file: HTTPS, a wrong password 401, the right one 200."""
    config = write_config(
        tmp_path / "web.yml",
        tls_config(
            pki,
            users=f"  prometheus: {HASH}\n",
        )
        + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
    )
    args = ["--demo", "--web.config.file", str(config)]
    with ExporterProcess(args, tmp_path, scheme="https") as exporter:
        exporter.wait_listening()
        with httpx.Client(verify=pki.client_context(), timeout=10) as client:
            deadline = time.monotonic() + 20
            while True:  # ready once the first collection has run
                ready = client.get(exporter.url + "/readyz", headers=basic("prometheus", PASSWORD))
                if ready.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert ready.status_code == 200
            good = client.get(exporter.url + "/metrics", headers=basic("prometheus", PASSWORD))
            assert good.status_code == 200
            assert "cerby_up 1" in good.text
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


def test_client_certificates_required_and_verified(
    pki: Pki, tmp_path: Path, serve: Callable[[Path], tuple[Server, WebConfigSource]]
) -> None:
    config = write_config(
        tmp_path / "web.yml",
        tls_config(
            pki,
            "  client_auth_type: RequireAndVerifyClientCert\n"
            f"  client_ca_file: {pki.path('ca.crt')}\n",
        ),
    )
    server, _ = serve(config)
    url = f"https://127.0.0.1:{server.port}/healthz"
    with httpx.Client(verify=pki.client_context("client"), timeout=5) as client:
        answer = client.get(url)
        assert answer.status_code == 200
        assert answer.text == "ok\n"
    for refused in (pki.client_context(), pki.client_context("rogue")):
        with pytest.raises(httpx.TransportError), httpx.Client(verify=refused, timeout=5) as c:
            c.get(url)


def test_client_certificate_verified_if_given(
    pki: Pki, tmp_path: Path, serve: Callable[[Path], tuple[Server, WebConfigSource]]
) -> None:
    config = write_config(
        tmp_path / "web.yml",
        tls_config(
            pki,
            "  client_auth_type: VerifyClientCertIfGiven\n"
            f"  client_ca_file: {pki.path('ca.crt')}\n",
        ),
    )
    server, _ = serve(config)
    url = f"https://127.0.0.1:{server.port}/healthz"
    for accepted in (pki.client_context(), pki.client_context("client")):
        assert httpx.get(url, verify=accepted, timeout=5).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=pki.client_context("rogue"), timeout=5)


def test_a_silent_client_does_not_block_the_others(
    pki: Pki, tmp_path: Path, serve: Callable[[Path], tuple[Server, WebConfigSource]]
) -> None:
    """The handshake runs on the connection's thread: a connection that never says hello
    holds up nobody else."""
    server, _ = serve(write_config(tmp_path / "web.yml", tls_config(pki)))
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        started = time.monotonic()
        answer = httpx.get(
            f"https://127.0.0.1:{server.port}/healthz", verify=pki.client_context(), timeout=5
        )
        assert answer.status_code == 200
        assert time.monotonic() - started < 2
    finally:
        for sock in silent:
            sock.close()


def served_certificate_of(pki: Pki, port: int) -> bytes:
    """The DER certificate the server on `port` presents."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        pki.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


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


def test_renewal_through_a_kubernetes_secret_volume(
    pki: Pki, tmp_path: Path, serve: Callable[[Path], tuple[Server, WebConfigSource]]
) -> None:
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
    server, _ = serve(volume / "web-config.yml")
    first = ssl.PEM_cert_to_DER_cert(pki.path("server.crt").read_text())
    assert served_certificate_of(pki, server.port) == first
    kubelet_publish(volume, secret("server2"), 2)
    renewed = ssl.PEM_cert_to_DER_cert(pki.path("server2.crt").read_text())
    deadline = time.monotonic() + 5
    while served_certificate_of(pki, server.port) != renewed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_certificate_of(pki, server.port) == renewed


def test_renewed_certificate_and_new_users_without_restart(
    pki: Pki, tmp_path: Path, serve: Callable[[Path], tuple[Server, WebConfigSource]]
) -> None:
    cert = tmp_path / "tls.crt"
    key = tmp_path / "tls.key"
    cert.write_bytes(pki.path("server.crt").read_bytes())
    key.write_bytes(pki.path("server.key").read_bytes())
    config = write_config(
        tmp_path / "web.yml",
        f"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        f"basic_auth_users:\n  prometheus: {HASH}\n",
    )
    server, _ = serve(config)
    url = f"https://127.0.0.1:{server.port}/"  # the landing page: behind basic auth

    def served_certificate() -> bytes:
        return served_certificate_of(pki, server.port)

    first = served_certificate()
    assert first == ssl.PEM_cert_to_DER_cert(pki.path("server.crt").read_text())
    # Renewal as cert-manager or a secret update does it: new files in place.
    for name, source in (("tls.key.new", "server2.key"), ("tls.crt.new", "server2.crt")):
        (tmp_path / name).write_bytes(pki.path(source).read_bytes())
    (tmp_path / "tls.key.new").replace(key)
    (tmp_path / "tls.crt.new").replace(cert)
    new_password = "a new password"
    new_hash = bcrypt.hashpw(new_password.encode(), bcrypt.gensalt(4)).decode()
    write_config(
        tmp_path / "web.yml.new",
        f"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        f"basic_auth_users:\n  prometheus: {new_hash}\n",
    ).replace(config)
    expected = ssl.PEM_cert_to_DER_cert(pki.path("server2.crt").read_text())
    deadline = time.monotonic() + 5
    while served_certificate() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_certificate() == expected
    with httpx.Client(verify=pki.client_context(), timeout=5) as client:
        assert client.get(url, headers=basic("prometheus", new_password)).status_code == 200
        assert client.get(url, headers=basic("prometheus", PASSWORD)).status_code == 401
    # A broken edit is refused and the configuration in force stays.
    write_config(tmp_path / "web.yml.bad", "basic_auth_users:\n  prometheus: nope\n").replace(
        config
    )
    time.sleep(0.2)
    with httpx.Client(verify=pki.client_context(), timeout=5) as client:
        assert client.get(url, headers=basic("prometheus", new_password)).status_code == 200


def test_basic_auth_over_plain_http(
    tmp_path: Path, serve: Callable[[Path], tuple[Server, WebConfigSource]]
) -> None:
    server, source = serve(
        write_config(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {HASH}\n")
    )
    assert not source.tls_enabled
    assert source.basic_auth_enabled
    url = f"http://127.0.0.1:{server.port}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers=basic("prometheus", PASSWORD), timeout=10).status_code == 200


def test_many_concurrent_authenticated_scrapes(
    tmp_path: Path, serve: Callable[[Path], tuple[Server, WebConfigSource]]
) -> None:
    """The cache makes bcrypt a once-per-credential cost, not a per-scrape one."""
    slow_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    server, _ = serve(
        write_config(tmp_path / "web.yml", f"basic_auth_users:\n  prometheus: {slow_hash}\n")
    )
    url = f"http://127.0.0.1:{server.port}/"
    assert httpx.get(url, timeout=10).status_code == 401
    codes: list[int] = []

    def scrape() -> None:
        with httpx.Client(timeout=10) as client:
            codes.extend(
                client.get(url, headers=basic("prometheus", PASSWORD)).status_code
                for _ in range(20)
            )

    started = time.monotonic()
    threads = [threading.Thread(target=scrape) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes == [200] * 100
    # 100 bcrypt checks at cost 10 would take several seconds on their own.
    assert time.monotonic() - started < 3


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
