"""Settings: every option is a `CERBY_*` variable and a flag, validated before anything starts.

The field list below is the single description of the options: the CLI builds its flags from it,
`--check-config` prints it and a test holds the README's configuration table to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cerby_exporter.jobids import (
    is_job_id,
    merge,
    normalize_job_id,
    parse_job_ids_file,
    split_job_ids,
)

DEFAULT_PORT: Final = 10366
"""Outside 9100-9999, the range Prometheus' default-port list has fully allocated."""

ENV_PREFIX: Final = "CERBY_"


class SettingsError(ValueError):
    """Bad settings, each problem worded as one line that names the flag and the variable."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {describe(field)}: {message}")
        self.field = field
        self.lines: tuple[str, ...] = (str(self),)

    @classmethod
    def every(cls, problems: list[SettingsError]) -> SettingsError:
        """One error standing for all of `problems`: a person fixes them in one go."""
        if len(problems) == 1:
            return problems[0]
        combined = cls(problems[0].field, "")
        combined.lines = tuple(line for problem in problems for line in problem.lines)
        combined.args = ("\n".join(combined.lines),)
        return combined

    def __str__(self) -> str:
        return str(self.args[0])


def _flag(name: str, help_text: str, **kwargs: Any) -> Any:
    """A field that is also a command-line flag named `name`."""
    return Field(description=help_text, json_schema_extra={"flag": name}, **kwargs)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, hide_input_in_errors=True
    )

    api_url: str | None = _flag(
        "--api-url", "Cerby API base URL, e.g. https://acme.cerby.com/api/v1.", default=None
    )
    workspace: str | None = _flag(
        "--workspace", "Workspace name, shortcut for https://NAME.cerby.com/api/v1.", default=None
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The API key (scope read:automations). Variable only: a flag shows in ps.",
    )
    api_key_file: Path | None = _flag(
        "--api-key-file", "File holding the API key; re-read when it changes.", default=None
    )
    ca_bundle: Path | None = _flag(
        "--ca-bundle", "PEM bundle to verify Cerby's TLS certificate with.", default=None
    )
    job_ids: Annotated[tuple[str, ...], NoDecode] = _flag(
        "--job-ids", "Job IDs to collect, comma or whitespace separated.", default=()
    )
    job_ids_file: Path | None = _flag(
        "--job-ids-file",
        "File of job IDs, one a line, # comments; re-read when it changes.",
        default=None,
    )
    cache_ttl: float = _flag(
        "--cache-ttl", "Seconds a job still in flight is served from cache.", default=60.0, gt=0
    )
    terminal_cache_ttl: float = _flag(
        "--terminal-cache-ttl",
        "Seconds a finished or failed job is served from cache.",
        default=3600.0,
        gt=0,
    )
    max_concurrency: int = _flag(
        "--max-concurrency", "Most API requests in flight at once.", default=16, ge=1, le=256
    )
    request_timeout: float = _flag(
        "--request-timeout", "Seconds one API request may take.", default=10.0, gt=0
    )
    max_jobs: int = _flag("--max-jobs", "Most job IDs tracked.", default=10000, ge=1)
    max_staleness: float = _flag(
        "--max-staleness",
        "Seconds past its refresh time a job's data is still shown while refreshes fail.",
        default=900.0,
        gt=0,
    )
    scrape_timeout: float = _flag(
        "--scrape-timeout",
        "Seconds a scrape may take when Prometheus does not send its own timeout.",
        default=10.0,
        gt=0,
    )
    scrape_timeout_offset: float = _flag(
        "--scrape-timeout-offset",
        "Seconds kept free before the scrape deadline to render and send the answer.",
        default=0.5,
        ge=0,
    )
    rate_limit_backoff: float = _flag(
        "--rate-limit-backoff",
        "Seconds without API calls after a 429 that has no Retry-After (Cerby advises 300).",
        default=300.0,
        gt=0,
    )
    retries: int = _flag(
        "--retries",
        "Retries of a request that failed with 5xx, timeout or reset, within the deadline.",
        default=2,
        ge=0,
        le=10,
    )
    status_series: Literal["dense", "sparse"] = _flag(
        "--status-series",
        "dense: all 7 cerby_job_status series a job; sparse: only the current one.",
        default="dense",
    )
    include_creator_labels: bool = _flag(
        "--include-creator-labels",
        "Add creator_id and creator_name (personal data) to cerby_job_info.",
        default=False,
    )
    listen_address: str = _flag(
        "--web.listen-address", "Address to serve metrics on.", default=f":{DEFAULT_PORT}"
    )
    web_config_file: Path | None = _flag(
        "--web.config.file",
        "TLS and basic-auth configuration, in the Prometheus exporter-toolkit format.",
        default=None,
    )
    webhook_keys_file: Path | None = _flag(
        "--webhook.keys-file",
        "YAML file of Cerby's webhook signing keys; enables the webhook receiver. Re-read when "
        "it changes.",
        default=None,
    )
    webhook_path: str = _flag(
        "--webhook.path", "Path the webhook receiver answers POSTs on.", default="/webhooks/cerby"
    )
    webhook_listen_address: str | None = _flag(
        "--webhook.listen-address",
        "A second address serving only the webhook path (for an Ingress that publishes it alone).",
        default=None,
    )
    state_path: Path = _flag(
        "--state.path",
        "SQLite file keeping learned jobs, webhook events and job data across restarts.",
        default=Path("cerby-exporter-state.sqlite"),
    )
    job_retention: float = _flag(
        "--job-retention",
        "Seconds a learned job in a terminal state is kept with no event about it.",
        default=604800.0,
        gt=0,
    )
    log_level: Literal["debug", "info", "warning", "error"] = _flag(
        "--log.level", "Least severe level logged.", default="info"
    )
    log_format: Literal["logfmt", "json"] = _flag(
        "--log.format", "Log line format.", default="logfmt"
    )
    demo: bool = _flag(
        "--demo", "Serve an embedded simulated workspace; no key or IDs needed.", default=False
    )

    @field_validator("job_ids", mode="before")
    @classmethod
    def _split_job_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(split_job_ids(value))
        return value

    @field_validator("api_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("workspace")
    @classmethod
    def _check_workspace(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value):
            raise ValueError("must be a workspace name such as 'acme' (lower case, digits, -)")
        return value

    @field_validator("listen_address", "webhook_listen_address")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen_address(value)
        return value

    @field_validator("webhook_path")
    @classmethod
    def _check_webhook_path(cls, value: str) -> str:
        reserved = {"/", "/metrics", "/probe", "/healthz", "/readyz"}
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", value) or value in reserved:
            raise ValueError("must be a path such as /webhooks/cerby, not one of the exporter's")
        return value

    @property
    def base_url(self) -> str | None:
        if self.api_url is not None:
            return self.api_url
        if self.workspace is not None:
            return f"https://{self.workspace}.cerby.com/api/v1"
        return None


def parse_listen_address(value: str) -> tuple[str, int]:
    """`host:port`, `:port` (every interface) or `[v6]:port`."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("must be host:port, :port or [ipv6]:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def flag_of(field: str) -> str | None:
    extra = Settings.model_fields[field].json_schema_extra
    if isinstance(extra, dict):
        flag = extra.get("flag")
        return flag if isinstance(flag, str) else None
    return None


def env_of(field: str) -> str:
    return ENV_PREFIX + field.upper()


def describe(field: str) -> str:
    """`--cache-ttl / CERBY_CACHE_TTL`: how a person would find the setting again."""
    if field not in Settings.model_fields:
        return field
    flag = flag_of(field)
    return f"{flag} / {env_of(field)}" if flag else env_of(field)


@dataclass(frozen=True, slots=True)
class Loaded:
    """Settings that passed every check, with the job IDs the files added."""

    settings: Settings
    job_ids: tuple[str, ...]


def load(flags: dict[str, Any]) -> Loaded:
    """Build settings from the environment, with flags winning, and check them all.

    Raises `SettingsError` with a line for every problem found.
    """
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        raise SettingsError.every(
            [_one_error(e) for e in exc.errors(include_url=False, include_input=False)]
        ) from None
    return Loaded(settings, check(settings))


def _one_error(error: Any) -> SettingsError:
    field = str(error["loc"][0]) if error["loc"] else "settings"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return SettingsError(field, "no such setting")
    return SettingsError(field, message[:1].lower() + message[1:])


def check(settings: Settings) -> tuple[str, ...]:
    """Cross-field and file checks; returns every job ID to track, merged and de-duplicated.

    Every problem is collected before raising, so one run of `--check-config` lists them all.
    """
    problems: list[SettingsError] = []

    def attempt(work: Callable[..., object], *args: Any) -> None:
        try:
            work(*args)
        except SettingsError as exc:
            problems.append(exc)

    if not settings.demo:
        attempt(_check_api, settings)
        if settings.api_key_file is not None:
            attempt(read_key_file, settings.api_key_file)
    for field in ("ca_bundle", "web_config_file", "webhook_keys_file"):
        path = getattr(settings, field)
        if path is not None:
            attempt(_read_text, field, path)
    for job_id in settings.job_ids:
        if not is_job_id(job_id):
            problems.append(
                SettingsError("job_ids", f"{job_id[:40]!r} is not a job ID (8-4-4-4-12 hex)")
            )
    from_file: list[tuple[str, ...]] = [()]
    if settings.job_ids_file is not None:
        attempt(lambda path: from_file.append(_file_job_ids(path)), settings.job_ids_file)
    ids = merge((normalize_job_id(i) for i in settings.job_ids if is_job_id(i)), from_file[-1])
    if len(ids) > settings.max_jobs:
        problems.append(
            SettingsError(
                "max_jobs", f"{len(ids)} job IDs given, more than the cap of {settings.max_jobs}"
            )
        )
    if problems:
        raise SettingsError.every(problems)
    return ids


def _check_api(settings: Settings) -> None:
    if settings.base_url is None:
        raise SettingsError("api_url", "required (or --workspace, or --demo)")
    if settings.api_key is None and settings.api_key_file is None:
        raise SettingsError("api_key_file", "an API key is required (or CERBY_API_KEY)")
    if settings.api_key is not None and not settings.api_key.get_secret_value().strip():
        raise SettingsError("api_key", "is empty")


def _file_job_ids(path: Path) -> tuple[str, ...]:
    parsed = parse_job_ids_file(_read_text("job_ids_file", path))
    if parsed.bad_lines:
        number, content = parsed.bad_lines[0]
        raise SettingsError(
            "job_ids_file", f"line {number}: {content[:40]!r} is not a job ID (8-4-4-4-12 hex)"
        )
    return parsed.ids


def watches_nothing(settings: Settings, job_ids: tuple[str, ...]) -> bool:
    """No job ID configured and no webhooks: only `/probe` targets would ever be collected."""
    return not settings.demo and not job_ids and settings.webhook_keys_file is None


def read_key_file(path: Path) -> str:
    """The key in a file, stripped of surrounding white space; never echoes the content."""
    key = _read_text("api_key_file", path).strip()
    if not key:
        raise SettingsError("api_key_file", f"{path} is empty")
    return key


def _read_text(field: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(field, f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SettingsError(field, f"{path}: cannot read ({reason})") from None


def effective(settings: Settings) -> dict[str, str]:
    """Every setting as a person would type it, the key redacted: for --check-config and logs."""
    shown: dict[str, str] = {}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if field == "api_key":
            text = "<redacted>" if value is not None else ""
        elif field == "api_url":
            text = settings.base_url or ""
        elif value is None:
            text = ""
        elif isinstance(value, tuple):
            text = ",".join(value)
        elif isinstance(value, bool):
            text = str(value).lower()
        else:
            text = str(value)
        shown[field] = text
    return shown
