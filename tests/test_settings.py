"""Settings: variables and flags, flags winning, and one clear line for each bad value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cerby_exporter.settings import (
    Settings,
    SettingsError,
    describe,
    effective,
    load,
    parse_listen_address,
)

A = "aaaaaaaa-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"
GOOD: dict[str, Any] = {"api_url": "https://acme.cerby.com/api/v1", "api_key": "k-123456"}


@pytest.fixture(autouse=True)
def _clean_env(isolated_env: Path) -> None:
    """Every test starts from an environment with no CERBY_* variable."""


def error_of(**flags: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load({**GOOD, **flags})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    settings = load(GOOD).settings
    assert settings.cache_ttl == 60
    assert settings.terminal_cache_ttl == 3600
    assert settings.max_concurrency == 16
    assert settings.request_timeout == 10
    assert settings.max_jobs == 10000
    assert settings.listen_address == ":10366"
    assert (settings.log_level, settings.log_format) == ("info", "logfmt")
    assert settings.status_series == "dense"
    assert settings.include_creator_labels is False


def test_environment_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERBY_API_URL", "https://from-env.cerby.com/api/v1/")
    monkeypatch.setenv("CERBY_API_KEY", "env-key-42")
    monkeypatch.setenv("CERBY_CACHE_TTL", "30")
    monkeypatch.setenv("CERBY_JOB_IDS", f"{A}, {B.upper()}")
    loaded = load({"cache_ttl": "15"})
    assert loaded.settings.base_url == "https://from-env.cerby.com/api/v1"
    assert loaded.settings.cache_ttl == 15
    assert loaded.job_ids == (A, B)


def test_workspace_shortcut() -> None:
    settings = load({"workspace": "acme", "api_key": "k-123456"}).settings
    assert settings.base_url == "https://acme.cerby.com/api/v1"


def test_job_ids_from_flag_and_file_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "ids"
    path.write_text(f"# watched\n{B}\n{A}\n\n")
    loaded = load({**GOOD, "job_ids": f"{A} {A}", "job_ids_file": str(path)})
    assert loaded.job_ids == (A, B)


def test_key_from_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("file-key-99\n")
    loaded = load({"api_url": GOOD["api_url"], "api_key_file": str(path)})
    assert loaded.settings.api_key_file == path


@pytest.mark.parametrize(
    ("flags", "names", "says"),
    [
        ({"api_url": "ftp://acme.cerby.com"}, "--api-url / CERBY_API_URL", "http"),
        ({"api_url": "acme.cerby.com"}, "--api-url / CERBY_API_URL", "http"),
        ({"api_url": "https://x.cerby.com/api?x=1"}, "--api-url / CERBY_API_URL", "query"),
        ({"workspace": "Acme Corp", "api_url": None}, "--workspace / CERBY_WORKSPACE", "name"),
        ({"cache_ttl": "0"}, "--cache-ttl / CERBY_CACHE_TTL", "greater than 0"),
        ({"cache_ttl": "-5"}, "--cache-ttl / CERBY_CACHE_TTL", "greater than 0"),
        ({"cache_ttl": "soon"}, "--cache-ttl / CERBY_CACHE_TTL", "number"),
        ({"terminal_cache_ttl": "0"}, "--terminal-cache-ttl", "greater than 0"),
        ({"max_concurrency": "0"}, "--max-concurrency", "greater than or equal to 1"),
        ({"request_timeout": "0"}, "--request-timeout", "greater than 0"),
        ({"max_jobs": "0"}, "--max-jobs", "greater than or equal to 1"),
        ({"listen_address": "10366"}, "--web.listen-address", "host:port"),
        ({"listen_address": ":99999"}, "--web.listen-address", "host:port"),
        ({"log_level": "loud"}, "--log.level / CERBY_LOG_LEVEL", "debug"),
        ({"log_format": "xml"}, "--log.format", "logfmt"),
        ({"job_ids": "not-a-job"}, "--job-ids / CERBY_JOB_IDS", "not a job ID"),
        ({"job_ids": f"{A},../../users"}, "--job-ids", "not a job ID"),
        ({"job_ids": f"{A},{B}", "max_jobs": "1"}, "--max-jobs", "more than the cap of 1"),
        ({"api_key": None}, "--api-key-file / CERBY_API_KEY_FILE", "required"),
        ({"api_key": "  "}, "CERBY_API_KEY", "empty"),
        ({"api_url": None}, "--api-url", "required"),
        ({"api_key_file": "/nonexistent/key"}, "--api-key-file", "no such file"),
        ({"job_ids_file": "/nonexistent/ids"}, "--job-ids-file", "no such file"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "--ca-bundle", "no such file"),
        ({"web_config_file": "/nonexistent/web.yml"}, "--web.config.file", "no such file"),
        ({"status_series": "some"}, "--status-series", "dense"),
    ],
)
def test_each_bad_value_is_one_line_naming_the_setting(
    flags: dict[str, Any], names: str, says: str
) -> None:
    message = error_of(**flags)
    assert names in message
    assert says in message


def test_bad_line_in_job_id_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "ids"
    path.write_text(f"{A}\n# fine\nbad-line\n")
    message = error_of(job_ids_file=str(path))
    assert "--job-ids-file / CERBY_JOB_IDS_FILE" in message
    assert "line 3" in message


def test_key_file_that_is_a_directory_cannot_be_read(tmp_path: Path) -> None:
    message = error_of(api_key=None, api_key_file=str(tmp_path))
    assert "--api-key-file" in message
    assert "cannot read" in message


def test_empty_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("\n")
    assert "is empty" in error_of(api_key=None, api_key_file=str(path))


def test_unknown_setting_is_refused() -> None:
    assert "no such setting" in error_of(colour="blue")


def test_demo_needs_no_url_or_key() -> None:
    assert load({"demo": True}).settings.demo is True


def test_key_never_shown_by_repr_errors_or_effective() -> None:
    secret = "sk-live-do-not-print-7781"
    settings = load({**GOOD, "api_key": secret}).settings
    assert secret not in repr(settings)
    assert secret not in str(settings)
    assert effective(settings)["api_key"] == "<redacted>"
    assert secret not in " ".join(effective(settings).values())
    with pytest.raises(SettingsError) as info:
        load({**GOOD, "api_key": secret, "cache_ttl": "x"})
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":10366", ("", 10366)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


def test_every_setting_has_a_variable_and_all_but_the_key_a_flag() -> None:
    for field in Settings.model_fields:
        names = describe(field)
        assert f"CERBY_{field.upper()}" in names
        assert names.startswith("--") or field == "api_key"
