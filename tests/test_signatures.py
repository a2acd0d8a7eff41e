"""Cerby's webhook signatures: keys file, headers, timestamps, verification and signing.

Every key is made in the test; every verdict is checked against the one expected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from multidict import CIMultiDict

from cerby_exporter import signatures
from cerby_exporter.signatures import (
    KEY_ID,
    MAX_SIGNATURES,
    SIGNATURE,
    TIMESTAMP,
    Ed25519Key,
    HmacKey,
    Keys,
    KeysFileError,
    KeysSource,
    Verdict,
    format_timestamp,
    load_keys,
    parse_keys,
    parse_timestamp,
    sign,
    signature_pairs,
    signed_messages,
    verify,
)

ED_ID = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
HM_ID = "0b2e4f6a-8c0d-4e1f-9a2b-3c4d5e6f7a8b"
NEW_ID = "d5e6f7a8-9b0c-4d1e-8f2a-3b4c5d6e7f80"
OTHER_ID = "11111111-2222-4333-8444-555555555555"
NOW = datetime(2026, 12, 1, 20, 41, 3, 123000, tzinfo=UTC).timestamp()
NOW_TEXT = "2026-12-01T20:41:03.123Z"
NOW_MILLIS = 1796157663123
BODY = b'{"event_id":"0193f1d2-7c4e-7a21-9b8e-3f2a1c0d9e8f","event_type":"automation.failed"}'
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

Headers = dict[str, list[str]]


@pytest.fixture
def ed_private() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def secret() -> bytes:
    return secrets.token_urlsafe(32).encode("ascii")


@pytest.fixture
def keys(ed_private: Ed25519PrivateKey, secret: bytes) -> Keys:
    return Keys.of(Ed25519Key(ED_ID, ed_private.public_key()), HmacKey(HM_ID, secret))


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def pem_public(private: Ed25519PrivateKey) -> str:
    return (
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    )


def lines(*signed: dict[str, str]) -> Headers:
    """Several signatures of one delivery, each header sent once per signature."""
    return {
        SIGNATURE: [one[SIGNATURE] for one in signed],
        KEY_ID: [one[KEY_ID] for one in signed],
        TIMESTAMP: [signed[0][TIMESTAMP]],
    }


def joined(*signed: dict[str, str]) -> Headers:
    """The same, each header folded into one comma-joined line."""
    return {name: [", ".join(values)] for name, values in lines(*signed).items()}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def replace_file(path: Path, text: str) -> Path:
    """Replace the file as an editor or a Secret update does: a new inode, so a new stamp."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text)
    staging.replace(path)
    return path


def pem_entry(key_id: str, pem: str) -> str:
    """An ed25519 entry with a PEM key, as a YAML block scalar."""
    body = "".join(f"      {line}\n" for line in pem.splitlines())
    return f"  - id: {key_id}\n    algorithm: ed25519\n    public_key: |\n{body}"


def ed_entry(key_id: str, public_key: str) -> str:
    return f"  - id: {key_id!r}\n    algorithm: ed25519\n    public_key: {public_key!r}\n"


def hm_entry(key_id: str, field: str, value: str) -> str:
    return f"  - id: {key_id!r}\n    algorithm: hmac-sha256\n    {field}: {value!r}\n"


# --- the keys file --------------------------------------------------------------------------


def url_specific_key() -> Ed25519PrivateKey:
    """A key whose base64url and base64 differ, so that both alphabets are put to the test."""
    while True:
        private = Ed25519PrivateKey.generate()
        encoded = b64url(raw_public(private))
        if "-" in encoded and "_" in encoded:
            return private


@pytest.mark.parametrize(
    "encode",
    [
        lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("="),
        lambda raw: base64.urlsafe_b64encode(raw).decode(),
        lambda raw: base64.b64encode(raw).decode(),
        lambda raw: base64.b64encode(raw).decode().rstrip("="),
    ],
    ids=["base64url", "base64url-padded", "base64", "base64-unpadded"],
)
def test_ed25519_public_key_in_every_base64(encode: Callable[[bytes], str], tmp_path: Path) -> None:
    private = url_specific_key()
    text = "keys:\n" + ed_entry(ED_ID, encode(raw_public(private)))
    keys = parse_keys(text, tmp_path)
    key = keys.get(ED_ID)
    assert isinstance(key, Ed25519Key)
    assert key.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw) == raw_public(private)
    headers = lines(sign(BODY, ED_ID, private, "ed25519", NOW))
    assert verify(BODY, headers, keys, NOW) == Verdict("verified", ED_ID)


def test_ed25519_public_key_as_pem(ed_private: Ed25519PrivateKey, tmp_path: Path) -> None:
    text = "keys:\n" + pem_entry(ED_ID, pem_public(ed_private))
    keys = parse_keys(text, tmp_path)
    headers = lines(sign(BODY, ED_ID, ed_private, "ed25519", NOW))
    assert verify(BODY, headers, keys, NOW) == Verdict("verified", ED_ID)


def test_ed25519_public_key_as_pem_body_without_armour(
    ed_private: Ed25519PrivateKey, tmp_path: Path
) -> None:
    der = ed_private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    keys = parse_keys("keys:\n" + ed_entry(ED_ID, base64.b64encode(der).decode()), tmp_path)
    key = keys.get(ED_ID)
    assert isinstance(key, Ed25519Key)
    assert key.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw) == raw_public(ed_private)


def test_hmac_secret_inline_and_from_files(secret: bytes, tmp_path: Path) -> None:
    (tmp_path / "relative.secret").write_bytes(secret + b"\n")  # as `echo` writes it
    absolute = tmp_path / "elsewhere" / "absolute.secret"
    absolute.parent.mkdir()
    absolute.write_bytes(secret)
    text = (
        "keys:\n"
        + hm_entry(HM_ID, "secret", secret.decode())
        + hm_entry(NEW_ID, "secret_file", "relative.secret")
        + hm_entry(OTHER_ID, "secret_file", str(absolute))
    )
    keys = parse_keys(text, tmp_path)
    assert len(keys) == 3
    for key_id in (HM_ID, NEW_ID, OTHER_ID):
        key = keys.get(key_id)
        assert isinstance(key, HmacKey)
        assert key.secret == secret
        assert secret.decode() not in repr(key)
        headers = lines(sign(BODY, key_id, secret, "hmac-sha256", NOW))
        assert verify(BODY, headers, keys, NOW) == Verdict("verified", key_id)


def test_key_ids_are_compared_as_uuids(ed_private: Ed25519PrivateKey, tmp_path: Path) -> None:
    text = "keys:\n" + ed_entry("{" + ED_ID.upper() + "}", b64url(raw_public(ed_private)))
    keys = parse_keys(text, tmp_path)
    assert list(keys.by_id) == [ED_ID]
    headers = lines(sign(BODY, ED_ID.upper(), ed_private, "ed25519", NOW))
    assert verify(BODY, headers, keys, NOW) == Verdict("verified", ED_ID)


def test_both_algorithms_in_one_file(
    ed_private: Ed25519PrivateKey, secret: bytes, tmp_path: Path
) -> None:
    text = (
        "keys:\n"
        + ed_entry(ED_ID, b64url(raw_public(ed_private)))
        + hm_entry(HM_ID, "secret", secret.decode())
    )
    keys = load_keys(replace_file(tmp_path / "keys.yaml", text))
    assert sorted(keys.by_id) == sorted([ED_ID, HM_ID])
    assert isinstance(keys.get(ED_ID), Ed25519Key)
    assert isinstance(keys.get(HM_ID), HmacKey)


SECRET = "s3cr3t-" + "Zq9xW2" * 4
"""Put in every bad file where it could be echoed; no message may contain it."""
GOOD_PUBLIC = b64url(bytes(range(32)))


def _file_errors() -> list[tuple[str, str]]:
    hm = f"keys:\n  - id: {HM_ID}\n    algorithm: hmac-sha256\n"
    ed = f"keys:\n  - id: {ED_ID}\n    algorithm: ed25519\n"
    return [
        (f"keys:\n  - id: {HM_ID}\n    secret: '{SECRET}\n", "not valid YAML at line "),
        (f"- {SECRET}\n", "the file must be a mapping with a `keys` list"),
        (f"keys: []\nsecret: {SECRET}\n", "unknown key 'secret' (only `keys` is allowed)"),
        (f"webhooks: {SECRET}\n", "unknown key 'webhooks'"),
        ("{}\n", "`keys` must be a list of keys"),
        (f"keys: {SECRET}\n", "`keys` must be a list of keys"),
        ("keys: []\n", "`keys` is empty: no delivery could be verified"),
        (f"keys:\n  - {SECRET}\n", "keys[0] must be a mapping with id, algorithm and a key"),
        (hm + f"    secert: {SECRET}\n", f"keys[0] (id {HM_ID}): unknown field 'secert'"),
        (f"keys:\n  - algorithm: hmac-sha256\n    secret: {SECRET}\n", "keys[0].id is missing"),
        (f"keys:\n  - id: {SECRET}\n    algorithm: hmac-sha256\n", "keys[0].id is not a UUID"),
        (f"keys:\n  - id: 42\n    secret: {SECRET}\n", "keys[0].id is not a UUID"),
        (
            f"keys:\n  - id: {HM_ID}\n    secret: {SECRET}\n",
            f"keys[0] (id {HM_ID}): algorithm must be one of ed25519, hmac-sha256",
        ),
        (
            f"keys:\n  - id: {HM_ID}\n    algorithm: HMAC-SHA512\n    secret: {SECRET}\n",
            f"keys[0] (id {HM_ID}): algorithm must be one of ed25519, hmac-sha256",
        ),
        (
            ed + f"    public_key: {GOOD_PUBLIC}\n    secret: {SECRET}\n",
            f"keys[0] (id {ED_ID}): secret does not apply to ed25519",
        ),
        (
            hm + f"    secret: {SECRET}\n    public_key: {GOOD_PUBLIC}\n",
            f"keys[0] (id {HM_ID}): public_key does not apply to hmac-sha256",
        ),
        (
            hm + f"    secret: {SECRET}\n    secret_file: other.secret\n",
            f"keys[0] (id {HM_ID}): give secret or secret_file, not both",
        ),
        (hm, f"keys[0] (id {HM_ID}): secret or secret_file is missing"),
        (hm + "    secret: ''\n", f"keys[0] (id {HM_ID}): the secret is empty"),
        (hm + "    secret: '   '\n", f"keys[0] (id {HM_ID}): the secret is empty"),
        (hm + "    secret: 123456789\n", f"keys[0] (id {HM_ID}): secret must be a string"),
        (hm + "    secret_file: ''\n", f"keys[0] (id {HM_ID}): secret_file must be a path"),
        (hm + "    secret_file: empty.secret\n", f"keys[0] (id {HM_ID}): the secret is empty"),
        (
            hm + "    secret_file: missing.secret\n",
            f"keys[0] (id {HM_ID}): secret_file {{dir}}/missing.secret: no such file",
        ),
        (ed, f"keys[0] (id {ED_ID}): public_key is missing"),
        (ed + "    public_key: 12345\n", f"keys[0] (id {ED_ID}): public_key must be a string"),
        (
            ed + f"    public_key: '{SECRET}!'\n",
            f"keys[0] (id {ED_ID}): public_key is neither base64 nor a PEM key",
        ),
        (
            ed + f"    public_key: {b64url(SECRET.encode()[:31])}\n",
            f"keys[0] (id {ED_ID}): public_key decodes to 31 bytes; an Ed25519 public key has 32",
        ),
        (
            ed + "    public_key: '-----BEGIN PUBLIC KEY-----\n      bm90IGEga2V5\n'\n",
            f"keys[0] (id {ED_ID}): public_key is not a valid PEM public key",
        ),
        (
            hm
            + f"    secret: {SECRET}\n  - id: '{HM_ID.upper()}'\n    algorithm: hmac-sha256\n"
            + f"    secret: {SECRET}x\n",
            f"keys[1] (id {HM_ID}): the id is also that of keys[0]",
        ),
    ]


@pytest.mark.parametrize(("text", "message"), _file_errors())
def test_keys_file_errors_are_one_line_without_the_secret(
    text: str, message: str, tmp_path: Path
) -> None:
    (tmp_path / "empty.secret").write_text("\n")
    path = replace_file(tmp_path / "keys.yaml", text)
    with pytest.raises(KeysFileError) as raised:
        load_keys(path)
    error = str(raised.value)
    assert error.startswith(f"{path}: {message.format(dir=tmp_path)}")
    assert "\n" not in error
    assert SECRET not in error


def test_a_pem_private_key_is_refused_without_echoing_it(
    ed_private: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pem = ed_private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    body = pem.splitlines()[1]
    text = "keys:\n" + pem_entry(ED_ID, pem)
    with pytest.raises(KeysFileError) as raised:
        parse_keys(text, tmp_path)
    assert str(raised.value) == (
        f"keys[0] (id {ED_ID}): public_key is a private key; give its public key"
    )
    assert body not in str(raised.value)


def test_a_pem_public_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    other = X25519PrivateKey.generate().public_key()
    pem = other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    text = "keys:\n" + pem_entry(ED_ID, pem)
    with pytest.raises(KeysFileError) as raised:
        parse_keys(text, tmp_path)
    assert str(raised.value) == (
        f"keys[0] (id {ED_ID}): public_key is a PEM public key, but not an Ed25519 one"
    )


def test_unreadable_keys_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(KeysFileError) as raised:
        load_keys(missing)
    assert str(raised.value) == f"{missing}: no such file"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"keys: \xff\xfe\n")
    with pytest.raises(KeysFileError) as raised:
        load_keys(binary)
    assert str(raised.value) == f"{binary}: cannot read (UnicodeDecodeError)"
    with pytest.raises(KeysFileError) as raised:
        load_keys(tmp_path)
    assert str(raised.value) == f"{tmp_path}: cannot read (Is a directory)"


def test_keys_of_refuses_bad_and_repeated_ids(secret: bytes) -> None:
    with pytest.raises(ValueError, match="distinct UUIDs"):
        Keys.of(HmacKey("not-a-uuid", secret))
    with pytest.raises(ValueError, match="distinct UUIDs"):
        Keys.of(HmacKey(HM_ID, secret), HmacKey(HM_ID.upper(), secret))
    keys = Keys.of(HmacKey(HM_ID.upper(), secret))
    assert list(keys.by_id) == [HM_ID]
    assert keys.get("not-a-uuid") is None


# --- headers --------------------------------------------------------------------------------


def test_signature_pairs_one_line_each() -> None:
    first, second = bytes(range(64)), bytes(range(64, 128))
    pairs = signature_pairs(
        [f"ed25519={b64url(first)}", f"hmac-sha256={b64url(second)}"], [NEW_ID, ED_ID]
    )
    assert pairs == [("ed25519", first, NEW_ID), ("hmac-sha256", second, ED_ID)]


def test_signature_pairs_comma_joined_and_mixed() -> None:
    a, b, c = b"\x01" * 64, b"\x02" * 32, b"\x03" * 64
    signature_values = [f"ed25519={b64url(a)}, hmac-sha256={b64url(b)}", f"ed25519={b64url(c)}"]
    key_id_values = [f"{NEW_ID},{ED_ID}", f" {OTHER_ID} "]
    assert signature_pairs(signature_values, key_id_values) == [
        ("ed25519", a, NEW_ID),
        ("hmac-sha256", b, ED_ID),
        ("ed25519", c, OTHER_ID),
    ]
    assert signature_pairs([", ".join(signature_values)], [", ".join(key_id_values)]) == (
        signature_pairs(signature_values, key_id_values)
    )


def test_signature_pairs_padded_unpadded_and_base64() -> None:
    raw = bytes([0xFB, 0xFF, 0xBF]) + bytes(range(61))  # base64 `+/`, base64url `-_`
    padded = base64.urlsafe_b64encode(raw).decode()
    assert padded.endswith("=")
    assert "-" in padded
    assert "_" in padded
    values = [
        f"ed25519={padded}",
        f"ed25519={padded.rstrip('=')}",
        f"ed25519={base64.b64encode(raw).decode()}",
    ]
    pairs = signature_pairs(values, [ED_ID, ED_ID, ED_ID])
    assert pairs == [("ed25519", raw, ED_ID)] * 3


def test_malformed_entries_are_skipped_keeping_the_others_in_place() -> None:
    good = b"\x07" * 64
    values = [
        f"ed25519={b64url(good)}",
        "no-equals-sign",
        "ed25519=not*base64",
        "ed25519=",
        "ed25519=A",  # one base64 character is no byte
        "=" + b64url(good),
        f"ED25519={b64url(good)}",
        f"hmac-sha256={b64url(good)}",
    ]
    ids = [ED_ID, ED_ID, ED_ID, ED_ID, ED_ID, ED_ID, NEW_ID.upper(), "not-a-uuid"]
    assert signature_pairs(values, ids) == [("ed25519", good, ED_ID), ("ed25519", good, NEW_ID)]


def test_pairs_stop_at_the_shorter_header() -> None:
    sig = f"ed25519={b64url(b'x' * 64)}"
    assert signature_pairs([sig, sig, sig], [ED_ID]) == [("ed25519", b"x" * 64, ED_ID)]
    assert signature_pairs([sig], [ED_ID, NEW_ID]) == [("ed25519", b"x" * 64, ED_ID)]
    assert signature_pairs([sig], []) == []
    assert signature_pairs([], [ED_ID]) == []
    assert signature_pairs(["", " , "], ["", ","]) == []


# --- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NOW_TEXT, NOW),
        ("2026-12-01T20:41:03.123+00:00", NOW),
        ("2026-12-01t20:41:03.123z", NOW),
        ("2026-12-01T21:41:03.123+01:00", NOW),
        ("2026-12-01T19:41:03.123-01:00", NOW),
        ("2026-12-01T20:41:03Z", NOW - 0.123),
        ("2026-12-01T20:41:03.1Z", NOW - 0.023),
        ("2026-12-01T20:41:03.123456789Z", NOW + 0.000456),
        (" 2026-12-01T20:41:03.123Z ", NOW),
    ],
)
def test_parse_timestamp(text: str, expected: float) -> None:
    parsed = parse_timestamp(text)
    assert parsed == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        str(NOW_MILLIS),
        "2026-12-01 20:41:03.123Z",
        "2026-12-01T20:41:03.123",
        "2026-02-30T20:41:03.123Z",
        "2026-12-01T24:00:00.000Z",
        "2026-12-01T23:59:60.000Z",
        "2026-12-01T20:41:03.1234567890Z",
        f"{NOW_TEXT}, {NOW_TEXT}",
    ],
)
def test_unparseable_timestamps(text: str) -> None:
    assert parse_timestamp(text) is None


def test_signed_messages_header_text_then_unix_millis() -> None:
    assert signed_messages(NOW_TEXT, b"{}") == [
        f"{NOW_TEXT}.{{}}".encode(),
        f"{NOW_MILLIS}.{{}}".encode(),
    ]
    assert signed_messages("2026-12-01T20:41:03.123999Z", b"x")[1] == f"{NOW_MILLIS}.x".encode()
    assert signed_messages("not a time", b"x") == [b"not a time.x"]
    assert signed_messages("", BODY) == [b"." + BODY]


def test_format_timestamp() -> None:
    assert format_timestamp(NOW) == NOW_TEXT
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(NOW + 0.0004) == NOW_TEXT
    assert parse_timestamp(format_timestamp(NOW)) == pytest.approx(NOW, abs=1e-6)


# --- verification ---------------------------------------------------------------------------


ALGORITHM_CASES = [("ed25519", ED_ID), ("hmac-sha256", HM_ID)]


@pytest.mark.parametrize(("algorithm", "key_id"), ALGORITHM_CASES)
@pytest.mark.parametrize("form", ["header", "millis"])
def test_a_signed_delivery_verifies(
    algorithm: str, key_id: str, form: str, keys: Keys, ed_private: Ed25519PrivateKey, secret: bytes
) -> None:
    key = ed_private if algorithm == "ed25519" else secret
    headers = lines(sign(BODY, key_id, key, algorithm, NOW, form=form))
    assert verify(BODY, headers, keys, NOW) == Verdict("verified", key_id)


@pytest.mark.parametrize(("algorithm", "key_id"), ALGORITHM_CASES)
def test_the_millis_reading_is_the_instant_of_the_header(
    algorithm: str, key_id: str, keys: Keys, ed_private: Ed25519PrivateKey, secret: bytes
) -> None:
    message = f"{NOW_MILLIS}.".encode() + BODY
    key = ed_private if algorithm == "ed25519" else secret
    signature = signatures.signature_of(message, key, algorithm)
    headers = {
        SIGNATURE: [f"{algorithm}={b64url(signature)}"],
        KEY_ID: [key_id],
        TIMESTAMP: [NOW_TEXT],
    }
    assert verify(BODY, headers, keys, NOW) == Verdict("verified", key_id)
    headers[TIMESTAMP] = ["2026-12-01T20:41:03.124Z"]  # a millisecond later: another message
    assert verify(BODY, headers, keys, NOW) == Verdict("bad_signature")


def test_hmac_is_over_the_header_text_and_body(keys: Keys, secret: bytes) -> None:
    expected = hmac.new(secret, f"{NOW_TEXT}.".encode() + BODY, hashlib.sha256).digest()
    headers = sign(BODY, HM_ID, secret, "hmac-sha256", NOW)
    assert headers == {
        SIGNATURE: f"hmac-sha256={b64url(expected)}",
        KEY_ID: HM_ID,
        TIMESTAMP: NOW_TEXT,
    }
    assert sign(BODY, HM_ID, secret.decode(), "hmac-sha256", NOW) == headers


def test_sign_writes_cerbys_headers(ed_private: Ed25519PrivateKey) -> None:
    headers = sign(BODY, ED_ID, ed_private, "ed25519", NOW + 0.5)
    assert set(headers) == {SIGNATURE, KEY_ID, TIMESTAMP}
    assert headers[KEY_ID] == ED_ID
    assert headers[TIMESTAMP] == "2026-12-01T20:41:03.623Z"
    assert RFC3339_MS.fullmatch(headers[TIMESTAMP])
    algorithm, _, encoded = headers[SIGNATURE].partition("=")
    assert algorithm == "ed25519"
    assert "=" not in encoded
    signature = base64.urlsafe_b64decode(encoded + "==")
    assert len(signature) == 64
    ed_private.public_key().verify(signature, b"2026-12-01T20:41:03.623Z." + BODY)
    millis = sign(BODY, ED_ID, ed_private, "ed25519", NOW, form="millis")
    encoded = millis[SIGNATURE].partition("=")[2]
    ed_private.public_key().verify(
        base64.urlsafe_b64decode(encoded + "=="), f"{NOW_MILLIS}.".encode() + BODY
    )


def test_sign_refuses_what_does_not_fit(ed_private: Ed25519PrivateKey, secret: bytes) -> None:
    with pytest.raises(ValueError, match="unknown form"):
        sign(BODY, ED_ID, ed_private, "ed25519", NOW, form="seconds")
    with pytest.raises(ValueError, match="unknown algorithm"):
        sign(BODY, ED_ID, ed_private, "rsa", NOW)
    with pytest.raises(ValueError, match="Ed25519PrivateKey"):
        sign(BODY, ED_ID, secret, "ed25519", NOW)
    with pytest.raises(ValueError, match="secret"):
        sign(BODY, HM_ID, ed_private, "hmac-sha256", NOW)


@pytest.mark.parametrize("shape", [lines, joined])
def test_rotation_unknown_new_key_first_known_old_second(
    shape: Callable[..., Headers], keys: Keys, ed_private: Ed25519PrivateKey
) -> None:
    new = Ed25519PrivateKey.generate()
    headers = shape(
        sign(BODY, NEW_ID, new, "ed25519", NOW), sign(BODY, ED_ID, ed_private, "ed25519", NOW)
    )
    assert verify(BODY, headers, keys, NOW) == Verdict("verified", ED_ID)


@pytest.mark.parametrize("shape", [lines, joined])
def test_rotation_across_algorithms_and_with_both_keys_known(
    shape: Callable[..., Headers], ed_private: Ed25519PrivateKey, secret: bytes
) -> None:
    new = Ed25519PrivateKey.generate()
    both = Keys.of(Ed25519Key(NEW_ID, new.public_key()), HmacKey(HM_ID, secret))
    headers = shape(
        sign(BODY, NEW_ID, new, "ed25519", NOW), sign(BODY, HM_ID, secret, "hmac-sha256", NOW)
    )
    assert verify(BODY, headers, both, NOW) == Verdict("verified", NEW_ID)
    old_only = Keys.of(HmacKey(HM_ID, secret))
    assert verify(BODY, headers, old_only, NOW) == Verdict("verified", HM_ID)
    new_only = Keys.of(Ed25519Key(NEW_ID, new.public_key()))
    assert verify(BODY, headers, new_only, NOW) == Verdict("verified", NEW_ID)


@pytest.mark.parametrize("shape", [lines, joined])
def test_only_unknown_key_ids_is_unknown_key(
    shape: Callable[..., Headers], keys: Keys, ed_private: Ed25519PrivateKey
) -> None:
    new = Ed25519PrivateKey.generate()
    headers = shape(
        sign(BODY, NEW_ID, new, "ed25519", NOW), sign(BODY, OTHER_ID, new, "ed25519", NOW)
    )
    assert verify(BODY, headers, keys, NOW) == Verdict("unknown_key")
    assert verify(BODY, lines(sign(BODY, NEW_ID, new, "ed25519", NOW)), keys, NOW) == Verdict(
        "unknown_key"
    )


@pytest.mark.parametrize("shape", [lines, joined])
def test_a_known_key_that_fails_beside_an_unknown_one_is_bad_signature(
    shape: Callable[..., Headers], keys: Keys
) -> None:
    new, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    headers = shape(
        sign(BODY, NEW_ID, new, "ed25519", NOW), sign(BODY, ED_ID, impostor, "ed25519", NOW)
    )
    assert verify(BODY, headers, keys, NOW) == Verdict("bad_signature")


@pytest.mark.parametrize(("algorithm", "key_id"), ALGORITHM_CASES)
@pytest.mark.parametrize("position", [0, len(BODY) // 2, len(BODY) - 1])
def test_one_byte_changed_in_the_body_is_bad_signature(
    algorithm: str,
    key_id: str,
    position: int,
    keys: Keys,
    ed_private: Ed25519PrivateKey,
    secret: bytes,
) -> None:
    key = ed_private if algorithm == "ed25519" else secret
    headers = lines(sign(BODY, key_id, key, algorithm, NOW))
    altered = bytearray(BODY)
    altered[position] ^= 0x01
    assert verify(bytes(altered), headers, keys, NOW) == Verdict("bad_signature")
    assert verify(BODY + b" ", headers, keys, NOW) == Verdict("bad_signature")
    assert verify(BODY, headers, keys, NOW) == Verdict("verified", key_id)


def test_one_bit_changed_in_the_signature_is_bad_signature(
    keys: Keys, ed_private: Ed25519PrivateKey
) -> None:
    headers = sign(BODY, ED_ID, ed_private, "ed25519", NOW)
    algorithm, _, encoded = headers[SIGNATURE].partition("=")
    signature = bytearray(base64.urlsafe_b64decode(encoded + "=="))
    signature[10] ^= 0x80
    headers[SIGNATURE] = f"{algorithm}={b64url(bytes(signature))}"
    assert verify(BODY, lines(headers), keys, NOW) == Verdict("bad_signature")


def test_a_signature_by_key_a_under_key_id_b_is_bad_signature(
    ed_private: Ed25519PrivateKey, secret: bytes
) -> None:
    other = Ed25519PrivateKey.generate()
    keys = Keys.of(
        Ed25519Key(ED_ID, ed_private.public_key()),
        Ed25519Key(NEW_ID, other.public_key()),
        HmacKey(HM_ID, secret),
    )
    by_a_as_b = sign(BODY, NEW_ID, ed_private, "ed25519", NOW)
    assert verify(BODY, lines(by_a_as_b), keys, NOW) == Verdict("bad_signature")
    hmac_as_ed = sign(BODY, ED_ID, secret, "hmac-sha256", NOW)
    assert verify(BODY, lines(hmac_as_ed), keys, NOW) == Verdict("bad_signature")


def test_no_algorithm_confusion(ed_private: Ed25519PrivateKey) -> None:
    """An HMAC under the Ed25519 *public* key, which anyone may know, proves nothing."""
    keys = Keys.of(Ed25519Key(ED_ID, ed_private.public_key()))
    forged = sign(BODY, ED_ID, raw_public(ed_private), "hmac-sha256", NOW)
    assert verify(BODY, lines(forged), keys, NOW) == Verdict("bad_signature")
    relabelled = sign(BODY, ED_ID, ed_private, "ed25519", NOW)
    relabelled[SIGNATURE] = relabelled[SIGNATURE].replace("ed25519=", "hmac-sha256=")
    assert verify(BODY, lines(relabelled), keys, NOW) == Verdict("bad_signature")


def test_the_header_algorithm_must_be_the_keys(keys: Keys, secret: bytes) -> None:
    """A correct HMAC labelled as another algorithm is not checked by the key's rule anyway."""
    genuine = sign(BODY, HM_ID, secret, "hmac-sha256", NOW)
    assert verify(BODY, lines(genuine), keys, NOW) == Verdict("verified", HM_ID)
    relabelled = {**genuine, SIGNATURE: genuine[SIGNATURE].replace("hmac-sha256=", "ed25519=")}
    assert verify(BODY, lines(relabelled), keys, NOW) == Verdict("bad_signature")
    upper = {**genuine, SIGNATURE: genuine[SIGNATURE].replace("hmac-sha256=", "HMAC-SHA256=")}
    assert verify(BODY, lines(upper), keys, NOW) == Verdict("verified", HM_ID)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {TIMESTAMP: [NOW_TEXT]},
        {SIGNATURE: [], KEY_ID: [], TIMESTAMP: [NOW_TEXT]},
        {SIGNATURE: ["ed25519=" + b64url(b"s" * 64)], TIMESTAMP: [NOW_TEXT]},
        {KEY_ID: [ED_ID], TIMESTAMP: [NOW_TEXT]},
        {SIGNATURE: ["garbage"], KEY_ID: [ED_ID], TIMESTAMP: [NOW_TEXT]},
        {SIGNATURE: ["ed25519=" + b64url(b"s" * 64)], KEY_ID: ["garbage"], TIMESTAMP: [NOW_TEXT]},
    ],
    ids=[
        "none",
        "timestamp-only",
        "empty",
        "no-key-id",
        "no-signature",
        "malformed-signature",
        "malformed-key-id",
    ],
)
def test_no_usable_signature_is_bad_signature(headers: Headers, keys: Keys) -> None:
    assert verify(BODY, headers, keys, NOW) == Verdict("bad_signature")


def test_a_padded_signature_verifies_too(keys: Keys, ed_private: Ed25519PrivateKey) -> None:
    headers = sign(BODY, ED_ID, ed_private, "ed25519", NOW)
    headers[SIGNATURE] += "=="  # 64 bytes: 86 characters, two of padding
    assert len(headers[SIGNATURE].partition("=")[2]) == 88
    assert verify(BODY, lines(headers), keys, NOW) == Verdict("verified", ED_ID)


@pytest.mark.parametrize(("algorithm", "key_id"), ALGORITHM_CASES)
@pytest.mark.parametrize(
    ("offset", "result"),
    [(0, "verified"), (299, "verified"), (301, "stale_timestamp"), (3600, "stale_timestamp")],
)
@pytest.mark.parametrize("direction", [-1, 1], ids=["past", "future"])
def test_timestamp_window(
    algorithm: str,
    key_id: str,
    offset: int,
    result: signatures.Result,
    direction: int,
    keys: Keys,
    ed_private: Ed25519PrivateKey,
    secret: bytes,
) -> None:
    key = ed_private if algorithm == "ed25519" else secret
    for form in ("header", "millis"):
        headers = lines(sign(BODY, key_id, key, algorithm, NOW + direction * offset, form=form))
        assert verify(BODY, headers, keys, NOW) == Verdict(result, key_id)


def test_a_stale_timestamp_is_told_only_to_a_valid_signature(
    keys: Keys, ed_private: Ed25519PrivateKey
) -> None:
    old = NOW - 3600
    genuine = sign(BODY, ED_ID, ed_private, "ed25519", old)
    assert verify(BODY, lines(genuine), keys, NOW) == Verdict("stale_timestamp", ED_ID)
    forged = sign(BODY, ED_ID, Ed25519PrivateKey.generate(), "ed25519", old)
    assert verify(BODY, lines(forged), keys, NOW) == Verdict("bad_signature")
    unknown = sign(BODY, NEW_ID, Ed25519PrivateKey.generate(), "ed25519", old)
    assert verify(BODY, lines(unknown), keys, NOW) == Verdict("unknown_key")
    # A fresh timestamp pasted onto the old delivery breaks its signature.
    replayed = {**genuine, TIMESTAMP: NOW_TEXT}
    assert verify(BODY, lines(replayed), keys, NOW) == Verdict("bad_signature")


def test_a_missing_or_unreadable_timestamp_is_stale_once_verified(
    keys: Keys, ed_private: Ed25519PrivateKey, secret: bytes
) -> None:
    signature = signatures.signature_of(b"." + BODY, ed_private, "ed25519")
    headers: Headers = {SIGNATURE: [f"ed25519={b64url(signature)}"], KEY_ID: [ED_ID]}
    assert verify(BODY, headers, keys, NOW) == Verdict("stale_timestamp", ED_ID)
    unreadable = "Tue, 01 Dec 2026 20:41:03 GMT"
    signature = signatures.signature_of(f"{unreadable}.".encode() + BODY, secret, "hmac-sha256")
    headers = {
        SIGNATURE: [f"hmac-sha256={b64url(signature)}"],
        KEY_ID: [HM_ID],
        TIMESTAMP: [unreadable],
    }
    assert verify(BODY, headers, keys, NOW) == Verdict("stale_timestamp", HM_ID)
    normal = sign(BODY, ED_ID, ed_private, "ed25519", NOW)
    del normal[TIMESTAMP]
    assert verify(BODY, {k: [v] for k, v in normal.items()}, keys, NOW) == Verdict("bad_signature")


def test_headers_from_aiohttp_and_from_plain_mappings(
    keys: Keys, ed_private: Ed25519PrivateKey
) -> None:
    new = Ed25519PrivateKey.generate()
    first = sign(BODY, NEW_ID, new, "ed25519", NOW)
    second = sign(BODY, ED_ID, ed_private, "ed25519", NOW)
    multi: CIMultiDict[str] = CIMultiDict()
    for signed in (first, second):
        multi.add(SIGNATURE.lower(), signed[SIGNATURE])
        multi.add(KEY_ID.upper(), signed[KEY_ID])
    multi.add(TIMESTAMP, NOW_TEXT)
    assert verify(BODY, multi, keys, NOW) == Verdict("verified", ED_ID)
    plain = {name.lower(): value for name, value in second.items()}
    assert verify(BODY, plain, keys, NOW) == Verdict("verified", ED_ID)


def test_the_body_is_never_parsed(keys: Keys, ed_private: Ed25519PrivateKey) -> None:
    for body in (b"", b"\xff\x00 not json", b"{" * 10_000):
        headers = lines(sign(body, ED_ID, ed_private, "ed25519", NOW))
        assert verify(body, headers, keys, NOW) == Verdict("verified", ED_ID)


def test_only_the_first_signatures_are_tried(keys: Keys, ed_private: Ed25519PrivateKey) -> None:
    impostor = Ed25519PrivateKey.generate()
    padding = [sign(BODY, ED_ID, impostor, "ed25519", NOW)] * (MAX_SIGNATURES - 1)
    good = sign(BODY, ED_ID, ed_private, "ed25519", NOW)
    assert verify(BODY, lines(*padding, good), keys, NOW) == Verdict("verified", ED_ID)
    assert verify(BODY, lines(*padding, padding[0], good), keys, NOW) == Verdict("bad_signature")


# --- reloading ------------------------------------------------------------------------------


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=signatures.__name__):
        yield caplog


def warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_reload_keeps_the_keys_on_a_bad_file_and_takes_a_fixed_one(
    tmp_path: Path, secret: bytes, warnings: pytest.LogCaptureFixture
) -> None:
    path = replace_file(tmp_path / "keys.yaml", "keys:\n" + hm_entry(HM_ID, "secret", "first"))
    source = KeysSource(path)
    assert list(source.keys.by_id) == [HM_ID]
    assert source.reload_if_changed() is False
    assert warnings.records == []

    bad = "keys:\n" + hm_entry(HM_ID, "secret", secret.decode()) + "    secert: oops\n"
    replace_file(path, bad)
    before = source.keys
    for _ in range(3):
        assert source.reload_if_changed() is False
    assert source.keys is before
    assert warned(warnings) == [
        "webhook keys not reloaded, keeping the 1 in force: "
        f"{path}: keys[0] (id {HM_ID}): unknown field 'secert'"
    ]

    replace_file(path, "keys:\n" + hm_entry(HM_ID, "secret", secret.decode()))
    assert source.reload_if_changed() is True
    key = source.keys.get(HM_ID)
    assert isinstance(key, HmacKey)
    assert key.secret == secret
    assert source.reload_if_changed() is False
    assert len(warned(warnings)) == 1
    assert f"webhook keys reloaded from {path}: 1 keys" in warnings.messages
    assert all(secret.decode() not in message for message in warnings.messages)


def test_each_new_bad_version_is_logged_once(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    path = replace_file(tmp_path / "keys.yaml", "keys:\n" + hm_entry(HM_ID, "secret", "first"))
    source = KeysSource(path)
    replace_file(path, "keys: []\n")
    source.reload_if_changed()
    source.reload_if_changed()
    replace_file(path, "keys: {}\n")
    source.reload_if_changed()
    source.reload_if_changed()
    keeping = f"webhook keys not reloaded, keeping the 1 in force: {path}: "
    assert warned(warnings) == [
        keeping + "`keys` is empty: no delivery could be verified",
        keeping + "`keys` must be a list of keys",
    ]
    assert list(source.keys.by_id) == [HM_ID]


def test_a_changed_secret_file_is_noticed(tmp_path: Path) -> None:
    secret_path = tmp_path / "hmac.secret"
    secret_path.write_text("old-secret\n")
    path = replace_file(
        tmp_path / "keys.yaml", "keys:\n" + hm_entry(HM_ID, "secret_file", "hmac.secret")
    )
    source = KeysSource(path)
    old = lines(sign(BODY, HM_ID, b"old-secret", "hmac-sha256", NOW))
    assert verify(BODY, old, source.keys, NOW) == Verdict("verified", HM_ID)
    replace_file(secret_path, "new-secret\n")
    assert source.reload_if_changed() is True
    new = lines(sign(BODY, HM_ID, b"new-secret", "hmac-sha256", NOW))
    assert verify(BODY, new, source.keys, NOW) == Verdict("verified", HM_ID)
    assert verify(BODY, old, source.keys, NOW) == Verdict("bad_signature")


def test_a_secret_file_missing_on_reload_is_picked_up_once_it_appears(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    path = replace_file(tmp_path / "keys.yaml", "keys:\n" + hm_entry(HM_ID, "secret", "first"))
    source = KeysSource(path)
    text = (
        "keys:\n"
        + hm_entry(HM_ID, "secret", "first")
        + hm_entry(NEW_ID, "secret_file", "new.secret")
    )
    replace_file(path, text)
    assert source.reload_if_changed() is False
    assert source.reload_if_changed() is False
    assert warned(warnings) == [
        "webhook keys not reloaded, keeping the 1 in force: "
        f"{path}: keys[1] (id {NEW_ID}): secret_file {tmp_path}/new.secret: no such file"
    ]
    (tmp_path / "new.secret").write_text("rotated-in\n")
    assert source.reload_if_changed() is True
    assert sorted(source.keys.by_id) == sorted([HM_ID, NEW_ID])
    signed = lines(sign(BODY, NEW_ID, "rotated-in", "hmac-sha256", NOW))
    assert verify(BODY, signed, source.keys, NOW) == Verdict("verified", NEW_ID)


def test_a_keys_file_gone_for_a_while(tmp_path: Path, warnings: pytest.LogCaptureFixture) -> None:
    text = "keys:\n" + hm_entry(HM_ID, "secret", "first")
    path = replace_file(tmp_path / "keys.yaml", text)
    source = KeysSource(path)
    path.unlink()
    assert source.reload_if_changed() is False
    assert source.reload_if_changed() is False
    assert warned(warnings) == [
        f"webhook keys not reloaded, keeping the 1 in force: {path}: no such file"
    ]
    replace_file(path, text + hm_entry(NEW_ID, "secret", "second"))
    assert source.reload_if_changed() is True
    assert len(source.keys) == 2


def test_a_bad_file_at_start_is_an_error(tmp_path: Path) -> None:
    path = replace_file(tmp_path / "keys.yaml", "keys: []\n")
    with pytest.raises(KeysFileError, match="`keys` is empty"):
        KeysSource(path)


def test_watch_installs_a_new_key(tmp_path: Path, warnings: pytest.LogCaptureFixture) -> None:
    path = replace_file(tmp_path / "keys.yaml", "keys:\n" + hm_entry(HM_ID, "secret", "first"))
    source = KeysSource(path, recheck_seconds=0.01)
    failures = iter([RuntimeError("surprise")])
    reload = source.reload_if_changed

    def flaky() -> bool:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return reload()

    source.reload_if_changed = flaky  # type: ignore[method-assign]

    async def scenario() -> None:
        watching = asyncio.create_task(source.watch())
        replace_file(path, "keys:\n" + hm_entry(NEW_ID, "secret", "second"))
        try:
            for _ in range(500):
                if source.keys.get(NEW_ID) is not None:
                    break
                await asyncio.sleep(0.01)
        finally:
            watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching

    asyncio.run(scenario())
    assert list(source.keys.by_id) == [NEW_ID]
    assert "webhook keys check failed, will try again: RuntimeError" in warnings.messages
