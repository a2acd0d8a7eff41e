"""Cerby's webhook signatures: the keys file, the headers, and the check of a delivery.

A delivery is believed only when a signature over its raw bytes verifies with a key the operator
installed; nothing here parses the body. The keys file (`--webhook.keys-file`)::

    keys:
      - id: 6f1c2d3e-...              # as in X-Cerby-Signature-Key-Id
        algorithm: ed25519
        public_key: <base64 or base64url of the 32-byte key, or a PEM public key>
      - id: 0b2e4f6a-...
        algorithm: hmac-sha256
        secret: <the signing secret>  # or secret_file: path (relative to the keys file)

Both algorithms may be installed at once, and so may an old and a new key: Cerby signs every
delivery with both keys for the 24 hours of a rotation, new key first, so the new key can be added
before the rotation starts, and the old one removed after it ends, without losing a delivery.
The file and the secret files it names are re-read when they change, without a restart; a file
that does not load leaves the keys in force.

An HMAC secret is used as the UTF-8 bytes of its text (or the bytes of its file), without
surrounding whitespace, which editors and `echo` add; Cerby does not document a decoding of it
(inferred).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from cerby_exporter.watched import Stamp, stamp_of
from cerby_exporter.yamltext import InvalidYaml, yaml_document

log = logging.getLogger(__name__)

SIGNATURE: Final = "X-Cerby-Signature"
KEY_ID: Final = "X-Cerby-Signature-Key-Id"
TIMESTAMP: Final = "X-Cerby-Signature-Timestamp"
MAX_SKEW_SECONDS: Final = 300.0
"""Cerby: reject a timestamp more than five minutes from now. Both ways: a sender's clock may be
ahead of ours as well as behind."""
MAX_SIGNATURES: Final = 8
"""Cerby sends one signature, two during a rotation. Only this many are tried, so a request
cannot make the receiver hash its body thousands of times."""
RECHECK_SECONDS: Final = 1.0
ED25519: Final = "ed25519"
HMAC_SHA256: Final = "hmac-sha256"
ALGORITHMS: Final = (ED25519, HMAC_SHA256)
ED25519_KEY_BYTES: Final = 32
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)
_ALGORITHM_TOKEN: Final = re.compile(r"[a-z0-9][a-z0-9-]*")
_ENTRY_FIELDS: Final = frozenset({"id", "algorithm", "public_key", "secret", "secret_file"})
_FIELDS_OF: Final = {
    ED25519: frozenset({"id", "algorithm", "public_key"}),
    HMAC_SHA256: frozenset({"id", "algorithm", "secret", "secret_file"}),
}

Result = Literal["verified", "bad_signature", "stale_timestamp", "unknown_key"]
Reader = Callable[[Path], bytes]


class KeysFileError(ValueError):
    """The keys file is unusable. The message is one line, names the entry and the field, and
    never quotes a secret or key: it goes to logs and to the terminal."""


# --- keys -----------------------------------------------------------------------------------


def normalise_key_id(text: str) -> str | None:
    """The canonical lower-case form of a key ID, or None if it is not a UUID.

    Headers and the file may differ in case (and in braces or hyphens); one form makes the
    lookup an exact match.
    """
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Ed25519Key:
    id: str
    public_key: Ed25519PublicKey
    algorithm: ClassVar[str] = ED25519

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class HmacKey:
    id: str
    secret: bytes = field(repr=False)
    """Kept out of `repr`, so that a key logged by mistake does not log its secret."""
    algorithm: ClassVar[str] = HMAC_SHA256

    def verifies(self, signature: bytes, message: bytes) -> bool:
        expected = hmac.new(self.secret, message, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)


Key = Ed25519Key | HmacKey


@dataclass(frozen=True, slots=True)
class Keys:
    """The installed keys, by normalised key ID."""

    by_id: Mapping[str, Key]

    @classmethod
    def of(cls, *keys: Key) -> Keys:
        """For code and tests that hold keys rather than a file; raises ValueError on an ID that
        is not a UUID or is given twice."""
        by_id: dict[str, Key] = {}
        for key in keys:
            key_id = normalise_key_id(key.id)
            if key_id is None or key_id in by_id:
                raise ValueError("key IDs must be distinct UUIDs")
            by_id[key_id] = key
        return cls(by_id)

    def get(self, key_id: str) -> Key | None:
        normal = normalise_key_id(key_id)
        return self.by_id.get(normal) if normal is not None else None

    def __len__(self) -> int:
        return len(self.by_id)


def parse_keys(text: str, directory: Path, *, read: Reader = Path.read_bytes) -> Keys:
    """Parse and check the keys file's content; `secret_file` paths are relative to `directory`.

    Reads the secret files, so it blocks. `read` lets `KeysSource` note which files it read.
    """
    try:
        document = yaml_document(text)
    except InvalidYaml as exc:
        raise KeysFileError(str(exc)) from None
    if not isinstance(document, dict):
        raise KeysFileError("the file must be a mapping with a `keys` list")
    unknown = sorted(str(name) for name in document if name != "keys")
    if unknown:
        raise KeysFileError(f"unknown key {_name(unknown[0])} (only `keys` is allowed)")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise KeysFileError("`keys` must be a list of keys")
    if not entries:
        raise KeysFileError("`keys` is empty: no delivery could be verified")
    by_id: dict[str, Key] = {}
    first_of: dict[str, int] = {}
    for index, entry in enumerate(entries):
        key = _parse_entry(entry, f"keys[{index}]", directory, read)
        if key.id in by_id:
            raise KeysFileError(
                f"keys[{index}] (id {key.id}): the id is also that of keys[{first_of[key.id]}]"
            )
        by_id[key.id] = key
        first_of[key.id] = index
    return Keys(by_id)


def load_keys(path: Path, *, read: Reader = Path.read_bytes) -> Keys:
    """Read and check the keys file and the files it names. Blocking: run it in a thread."""
    try:
        text = read(path).decode("utf-8")
    except FileNotFoundError:
        raise KeysFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"{path}: cannot read ({_reason(exc)})") from None
    try:
        return parse_keys(text, path.parent, read=read)
    except KeysFileError as exc:
        raise KeysFileError(f"{path}: {exc}") from None


def _parse_entry(entry: object, where: str, directory: Path, read: Reader) -> Key:
    if not isinstance(entry, dict):
        raise KeysFileError(f"{where} must be a mapping with id, algorithm and a key")
    raw_id = entry.get("id")
    if raw_id is None:
        raise KeysFileError(f"{where}.id is missing")
    key_id = normalise_key_id(raw_id) if isinstance(raw_id, str) else None
    if key_id is None:
        raise KeysFileError(f"{where}.id is not a UUID")
    where = f"{where} (id {key_id})"
    unknown = sorted(str(name) for name in entry if name not in _ENTRY_FIELDS)
    if unknown:
        raise KeysFileError(f"{where}: unknown field {_name(unknown[0])}")
    algorithm = entry.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise KeysFileError(f"{where}: algorithm must be one of {', '.join(ALGORITHMS)}")
    misplaced = sorted(set(entry) - _FIELDS_OF[algorithm])
    if misplaced:
        raise KeysFileError(f"{where}: {misplaced[0]} does not apply to {algorithm}")
    if algorithm == ED25519:
        return Ed25519Key(key_id, _public_key(entry.get("public_key"), where))
    return HmacKey(key_id, _secret(entry, where, directory, read))


def _public_key(value: object, where: str) -> Ed25519PublicKey:
    if value is None:
        raise KeysFileError(f"{where}: public_key is missing")
    if not isinstance(value, str):
        raise KeysFileError(f"{where}: public_key must be a string")
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return _pem_public_key(text, where)
    try:
        raw = _b64decode("".join(text.split()))
    except ValueError:
        raise KeysFileError(f"{where}: public_key is neither base64 nor a PEM key") from None
    if len(raw) == ED25519_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:  # a PEM key's body without its armour: SubjectPublicKeyInfo, DER
        key = load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if isinstance(key, Ed25519PublicKey):
        return key
    raise KeysFileError(
        f"{where}: public_key decodes to {len(raw)} bytes; an Ed25519 public key has "
        f"{ED25519_KEY_BYTES}"
    )


def _pem_public_key(text: str, where: str) -> Ed25519PublicKey:
    if "PRIVATE KEY" in text.splitlines()[0]:
        raise KeysFileError(f"{where}: public_key is a private key; give its public key")
    try:
        key = load_pem_public_key(text.encode("ascii", "replace"))
    except (ValueError, UnsupportedAlgorithm):
        raise KeysFileError(f"{where}: public_key is not a valid PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeysFileError(f"{where}: public_key is a PEM public key, but not an Ed25519 one")
    return key


def _secret(entry: Mapping[str, Any], where: str, directory: Path, read: Reader) -> bytes:
    inline, file = entry.get("secret"), entry.get("secret_file")
    if inline is not None and file is not None:
        raise KeysFileError(f"{where}: give secret or secret_file, not both")
    if inline is not None:
        if not isinstance(inline, str):
            raise KeysFileError(f"{where}: secret must be a string (quote it)")
        secret = inline.strip().encode("utf-8")
    elif file is not None:
        if not isinstance(file, str) or not file.strip():
            raise KeysFileError(f"{where}: secret_file must be a path")
        path = directory / file.strip()
        try:
            secret = read(path).strip()
        except FileNotFoundError:
            raise KeysFileError(f"{where}: secret_file {path}: no such file") from None
        except OSError as exc:
            raise KeysFileError(
                f"{where}: secret_file {path}: cannot read ({_reason(exc)})"
            ) from None
    else:
        raise KeysFileError(f"{where}: secret or secret_file is missing")
    if not secret:
        raise KeysFileError(f"{where}: the secret is empty")
    return secret


def _name(text: str) -> str:
    """A field name, as the file has it, cut short: it is the operator's text."""
    return repr(text[:40])


def _reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or type(exc).__name__


class KeysSource:
    """The keys in force, re-read when the keys file or one of its secret files changes.

    Which files to watch is learnt from each attempt to load, good or bad, together with their
    stamps taken before reading them. So a reload that failed is not tried again, nor logged
    again, until something it read changes; and a fix made in a file only the failed attempt
    named (a secret_file that was missing) is noticed too. Raises `KeysFileError` at
    construction if the file is unusable.
    """

    def __init__(self, path: Path, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self._path = path
        self._recheck = recheck_seconds
        self._seen: dict[Path, Stamp | None] = {}
        self._keys = load_keys(path, read=self._reader(self._seen))

    @property
    def keys(self) -> Keys:
        return self._keys

    @staticmethod
    def _reader(seen: dict[Path, Stamp | None]) -> Reader:
        def read(path: Path) -> bytes:
            seen[path] = stamp_of(path)  # before reading: a change during the read is seen next
            return path.read_bytes()

        return read

    def reload_if_changed(self) -> bool:
        """True when new keys came into force. Blocking (stat, read): run it in a thread."""
        if all(stamp_of(path) == stamp for path, stamp in self._seen.items()):
            return False
        seen: dict[Path, Stamp | None] = {}
        try:
            keys = load_keys(self._path, read=self._reader(seen))
        except KeysFileError as exc:
            self._seen = seen
            log.warning(
                "webhook keys not reloaded, keeping the %d in force: %s", len(self._keys), exc
            )
            return False
        self._keys, self._seen = keys, seen
        log.info("webhook keys reloaded from %s: %d keys", self._path, len(keys))
        return True

    async def watch(self) -> None:
        """Check for changes every `recheck_seconds` until cancelled. A surprise is logged and
        the watching goes on: a task that died would leave a rotation's new key uninstalled."""
        while True:
            await asyncio.sleep(self._recheck)
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception as exc:
                log.error("webhook keys check failed, will try again: %s", type(exc).__name__)


# --- headers and timestamps -----------------------------------------------------------------


def _b64decode(text: str) -> bytes:
    """base64url or base64, padded or not (Cerby leaves the padding off); ValueError if neither."""
    if not text:
        raise ValueError("empty")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _elements(values: Iterable[str]) -> list[str]:
    """A header's list elements, whether sent as repeated lines or as one comma-joined line.

    Empty elements are dropped, as HTTP (RFC 9110, 5.6.1) asks. Neither base64url nor a UUID
    contains a comma, so splitting on it is safe.
    """
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def signature_pairs(
    signature_values: Sequence[str], key_id_values: Sequence[str]
) -> list[tuple[str, bytes, str]]:
    """(algorithm, signature, key ID) for each signature, paired with its key ID by position.

    A malformed signature or key ID drops its pair only: the other signature of a rotation may
    still verify. Pairs beyond the shorter list are dropped; a wrong pairing can only fail to
    verify, never verify what it should not.
    """
    pairs: list[tuple[str, bytes, str]] = []
    for signature, raw_id in zip(
        _elements(signature_values), _elements(key_id_values), strict=False
    ):
        algorithm, equals, encoded = signature.partition("=")
        algorithm = algorithm.strip().lower()
        key_id = normalise_key_id(raw_id)
        if not equals or key_id is None or _ALGORITHM_TOKEN.fullmatch(algorithm) is None:
            continue
        try:
            decoded = _b64decode(encoded.strip())
        except ValueError:
            continue
        pairs.append((algorithm, decoded, key_id))
    return pairs


def _parse_datetime(text: str) -> datetime | None:
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    micros = int((match.group(7) or "0").ljust(6, "0")[:6])
    offset = timedelta(0)
    if match.group(8) is None:
        offset = timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
        offset = -offset if match.group(9) == "-" else offset
    try:
        moment = datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    except ValueError:  # 2026-02-30, 24:00, a leap second
        return None
    return moment - offset


def parse_timestamp(text: str) -> float | None:
    """Unix seconds of an RFC 3339 timestamp (`2026-12-01T20:41:03.123Z`), or None.

    Cerby writes UTC with a `Z`; `+00:00`, and any other offset, describe an instant as well and
    are read too.
    """
    moment = _parse_datetime(text)
    return moment.timestamp() if moment is not None else None


def signed_messages(timestamp_header: str, body: bytes) -> list[bytes]:
    """The bytes a signature may be over, in the order tried.

    Cerby documents `<timestamp_ms>.<raw body>` and sends an RFC 3339 timestamp header, so the
    header's text as sent comes first, then the same instant as integer Unix milliseconds.
    Accepting either costs nothing: both still need the key, and the timestamp is checked on
    its own.
    """
    messages = [timestamp_header.encode("utf-8", "surrogateescape") + b"." + body]
    moment = _parse_datetime(timestamp_header)
    if moment is not None:
        millis = (moment - _EPOCH) // _ONE_MS
        messages.append(str(millis).encode("ascii") + b"." + body)
    return messages


def format_timestamp(timestamp: float) -> str:
    """As Cerby writes the timestamp header: RFC 3339, UTC, milliseconds."""
    moment = _EPOCH + timedelta(milliseconds=round(timestamp * 1000))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    result: Result
    key_id: str | None = None
    """The key whose signature verified (for "verified" and "stale_timestamp")."""


HeaderValues = Mapping[str, str | Sequence[str]]


def header_values(headers: HeaderValues, name: str) -> list[str]:
    """Every raw value of header `name`, from aiohttp's multidict (each repeated line) or from a
    plain mapping of names to a value or to a list of them; names compared case-insensitively."""
    getall = getattr(headers, "getall", None)
    if callable(getall):
        return [str(value) for value in getall(name, [])]
    values: list[str] = []
    for key, value in headers.items():
        if key.lower() == name.lower():
            values.extend([value] if isinstance(value, str) else value)
    return values


def verify(body: bytes, headers: HeaderValues, keys: Keys, now: float) -> Verdict:
    """Whether `body` (the raw bytes received) comes from Cerby, judged by its signature headers.

    The signature is checked before the timestamp, and a timestamp is judged only once a
    signature verifies. The timestamp is part of the signed bytes: until a signature verifies it
    is whatever the sender chose to write, and judging it first would answer "stale" to anyone
    who asks, telling them the receiver's clock and its window. Checking it first would save no
    work against a flood either: the flooder writes the current time. So an unverified request
    learns only "bad_signature" (or "unknown_key", which says no more than that the key IDs it
    sent are not installed), and "stale_timestamp" goes only to a genuine delivery that is too
    old or too new: a captured delivery replayed after five minutes, or a clock that is off.
    (A replay within the five minutes verifies; the receiver drops it as a duplicate event.)

    "unknown_key" only when every signature names a key ID that is not installed: a rotation has
    begun, Cerby should retry. A signature under a known key that fails makes the delivery
    "bad_signature" even if an unknown key signed it too, since during a rotation the old key's
    signature must verify. No signature at all is "bad_signature".
    """
    pairs = signature_pairs(header_values(headers, SIGNATURE), header_values(headers, KEY_ID))
    timestamp = ", ".join(header_values(headers, TIMESTAMP))
    messages = signed_messages(timestamp, body)
    known = False
    for algorithm, signature, key_id in pairs[:MAX_SIGNATURES]:
        key = keys.get(key_id)
        if key is None:
            continue
        known = True
        # The header's algorithm must be the key's: never check a signature by another rule.
        if algorithm == key.algorithm and any(key.verifies(signature, m) for m in messages):
            return Verdict(_timestamp_result(timestamp, now), key_id)
    return Verdict("bad_signature" if known or not pairs else "unknown_key")


def _timestamp_result(timestamp: str, now: float) -> Result:
    sent = parse_timestamp(timestamp)
    if sent is None or abs(now - sent) > MAX_SKEW_SECONDS:
        return "stale_timestamp"
    return "verified"


# --- signing, for the simulator and tests ---------------------------------------------------


def signature_of(message: bytes, key: Ed25519PrivateKey | bytes | str, algorithm: str) -> bytes:
    """The raw signature of `message`; raises ValueError on an algorithm or key that do not go
    together."""
    if algorithm == ED25519:
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("ed25519 signs with an Ed25519PrivateKey")
        return key.sign(message)
    if algorithm == HMAC_SHA256:
        if isinstance(key, Ed25519PrivateKey):
            raise ValueError("hmac-sha256 signs with a secret")
        secret = key.encode("utf-8") if isinstance(key, str) else key
        return hmac.new(secret, message, hashlib.sha256).digest()
    raise ValueError(f"unknown algorithm {algorithm!r}")


def sign(
    body: bytes,
    key_id: str,
    key: Ed25519PrivateKey | bytes | str,
    algorithm: str,
    timestamp: float,
    form: str = "header",
) -> dict[str, str]:
    """The three signature headers of a delivery, as Cerby sends them.

    `form` says which reading of `<timestamp_ms>` is signed: the header's text ("header") or
    integer Unix milliseconds ("millis"), so that both readings the receiver accepts can be
    exercised. Strings rather than literals, as the simulator takes them from its options.
    """
    header = format_timestamp(timestamp)
    if form == "header":
        message = header.encode("ascii") + b"." + body
    elif form == "millis":
        message = str(round(timestamp * 1000)).encode("ascii") + b"." + body
    else:
        raise ValueError(f"unknown form {form!r}")
    signature = signature_of(message, key, algorithm)
    return {
        SIGNATURE: f"{algorithm}={_b64encode(signature)}",
        KEY_ID: key_id,
        TIMESTAMP: header,
    }
