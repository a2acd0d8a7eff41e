"""`cerby-exporter`: parse flags, validate settings, serve on one event loop until SIGTERM.

Bad input ends here with one line on stderr and exit code 2; nothing below this module has to
think about how a person reads an error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import secrets
import signal
import ssl
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, get_args, get_origin

from aiohttp import web as aiohttp_web

from cerby_exporter import __version__, logs
from cerby_exporter.app import create_app, create_webhook_app, start_server
from cerby_exporter.jobids import merge
from cerby_exporter.settings import (
    Loaded,
    Settings,
    SettingsError,
    effective,
    env_of,
    flag_of,
    load,
    parse_listen_address,
    watches_nothing,
)

if TYPE_CHECKING:
    from cerby_exporter.signatures import KeysSource
    from cerby_exporter.simulator import WebhookDelivery
    from cerby_exporter.state import StateStore
    from cerby_exporter.webconfig import WebConfigSource

log = logging.getLogger("cerby_exporter")

EXIT_BAD_SETTINGS = 2
DEMO_CACHE_TTL = 5.0
"""The demo's jobs change within seconds; a minute's cache would hide most of it."""
DEMO_NEW_JOB_SECONDS = 20.0
"""How often the demo workspace starts a job configured nowhere, learned from its webhook."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage block."""
        self.exit(EXIT_BAD_SETTINGS, f"{self.prog}: {message} (see --help)\n")


class _RefuseKeyFlag(argparse.Action):
    """`--api-key VALUE` is refused without echoing VALUE, which is most likely the key."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            "there is no --api-key flag (a key on the command line shows in ps and shell "
            "history): set CERBY_API_KEY or use --api-key-file"
        )


def _metavar(annotation: Any) -> str:
    """What kind of value a flag takes, as --help shows it."""
    kinds = set(get_args(annotation)) or {annotation}
    if kinds & {int}:
        return "N"
    if kinds & {float}:
        return "SECONDS"
    if kinds & {Path}:
        return "FILE"
    return "VALUE"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cerby-exporter",
        description="Prometheus exporter for Cerby automation jobs. Every flag can also be set "
        "as the CERBY_* environment variable shown; a flag wins over its variable.",
        epilog="The API key has no flag (a flag shows in ps): set CERBY_API_KEY, or better "
        "--api-key-file / CERBY_API_KEY_FILE.",
        argument_default=argparse.SUPPRESS,
        # No abbreviations: `--api-key KEY` would otherwise be read as `--api-key-file KEY`, and
        # the error would print the key as a file name.
        allow_abbrev=False,
    )
    parser.add_argument("--api-key", nargs="?", action=_RefuseKeyFlag, help=argparse.SUPPRESS)
    for name, info in Settings.model_fields.items():
        flag = flag_of(name)
        if flag is None:
            continue
        help_text = f"{info.description} [{env_of(name)}]"
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_const", const=True, help=help_text)
        else:
            default = info.default if info.default not in (None, ()) else "none"
            choices = get_args(info.annotation) if get_origin(info.annotation) is Literal else ()
            parser.add_argument(
                flag,
                dest=name,
                metavar="{" + ",".join(choices) + "}" if choices else _metavar(info.annotation),
                choices=choices or None,
                help=f"{help_text} (default: {default})",
            )
    parser.add_argument(
        "--check-config",
        action="store_true",
        default=False,
        help="Validate the settings, print them with the key redacted, and exit.",
    )
    parser.add_argument("--version", action="version", version=f"cerby-exporter {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command; `argv` None means this process's own command line."""
    args = vars(build_parser().parse_args(argv))
    check_only = bool(args.pop("check_config", False))
    try:
        loaded = load(args)
        if loaded.settings.web_config_file is not None:
            _check_web_config(loaded.settings.web_config_file)
        if loaded.settings.webhook_keys_file is not None:
            _check_webhook_keys(loaded.settings.webhook_keys_file)
    except SettingsError as exc:
        for line in exc.lines:
            print(f"cerby-exporter: {line}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if check_only:
        for name, value in effective(loaded.settings).items():
            print(f"{name} = {value}")
        print(f"job_ids_total = {len(loaded.job_ids)}")
        if watches_nothing(loaded.settings, loaded.job_ids):
            print(
                "cerby-exporter: warning: no job IDs and no webhooks configured; only /probe "
                "targets will be collected (set --job-ids, --job-ids-file or "
                "--webhook.keys-file)",
                file=sys.stderr,
            )
        return 0
    try:
        return serve(loaded, explicit=set(args))
    except KeyboardInterrupt:
        return 0


def _check_web_config(path: Path) -> None:
    """The web config, certificates included, is checked before anything starts."""
    from cerby_exporter import webconfig

    try:
        webconfig.load(path)
    except webconfig.WebConfigError as exc:
        raise SettingsError("web_config_file", str(exc)) from None


def _demo_settings(settings: Settings, explicit: set[str]) -> tuple[Settings, Any]:
    """The demo's own state file and webhook signing key, in a fresh temporary directory,
    unless given: its simulated workspace is new at every start, and what an earlier run learned
    would not exist in it. Returns the settings and the private key the simulator signs with
    (None when the operator gave a keys file)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from cerby_exporter.simulator import DEMO_WEBHOOK_KEY_ID

    directory = Path(tempfile.mkdtemp(prefix="cerby-exporter-demo-"))
    changes: dict[str, Any] = {}
    if "state_path" not in explicit and "CERBY_STATE_PATH" not in os.environ:
        changes["state_path"] = directory / "state.sqlite"
    private_key = None
    if settings.webhook_keys_file is None:
        private_key = Ed25519PrivateKey.generate()
        public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        keys_file = directory / "webhook-keys.yaml"
        keys_file.write_text(
            f"keys:\n  - id: {DEMO_WEBHOOK_KEY_ID}\n    algorithm: ed25519\n"
            f"    public_key: {base64.b64encode(public).decode()}\n",
            encoding="utf-8",
        )
        changes["webhook_keys_file"] = keys_file
    return Settings.model_validate({**settings.model_dump(), **changes}), private_key


def _check_webhook_keys(path: Path) -> None:
    from cerby_exporter.signatures import KeysFileError, load_keys

    try:
        load_keys(path)
    except KeysFileError as exc:
        raise SettingsError("webhook_keys_file", str(exc)) from None


def serve(loaded: Loaded, explicit: set[str]) -> int:
    """Run until SIGTERM or SIGINT; `explicit` names the settings given as flags."""
    from cerby_exporter.state import StateError, StateStore

    settings = loaded.settings
    redactor = logs.Redactor()
    logs.configure(settings.log_level, settings.log_format, redactor)
    signing_key = None
    if settings.demo:
        settings, signing_key = _demo_settings(settings, explicit)
    keys = None
    if settings.webhook_keys_file is not None:
        # Only here: signatures loads cryptography, which an exporter without webhooks never needs.
        from cerby_exporter.signatures import KeysFileError, KeysSource

        try:
            keys = KeysSource(settings.webhook_keys_file)
        except KeysFileError as exc:  # changed since main() checked it
            print(
                f"cerby-exporter: {SettingsError('webhook_keys_file', str(exc))}", file=sys.stderr
            )
            return EXIT_BAD_SETTINGS
    try:
        state = StateStore.open(settings.state_path)
    except StateError as exc:
        print(f"cerby-exporter: {SettingsError('state_path', str(exc))}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    web = None
    if settings.web_config_file is not None:
        from cerby_exporter.webconfig import WebConfigError, WebConfigSource

        try:
            web = WebConfigSource(settings.web_config_file)
        except WebConfigError as exc:  # changed since main() checked it
            print(f"cerby-exporter: {SettingsError('web_config_file', str(exc))}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
    return asyncio.run(_serve(settings, loaded, explicit, redactor, web, state, keys, signing_key))


async def _serve(
    settings: Settings,
    loaded: Loaded,
    explicit: set[str],
    redactor: logs.Redactor,
    web: WebConfigSource | None,
    state: StateStore,
    keys: KeysSource | None,
    signing_key: Any = None,
) -> int:
    simulator = None
    if settings.demo:
        from cerby_exporter import simulator as sim

        key = secrets.token_urlsafe(24)
        redactor.add(key)
        simulator = await sim.Simulator(sim.Workspace(sim.demo_jobs(), key)).serve()
        demo: dict[str, Any] = {
            "api_url": simulator.base_url,
            "api_key": key,
            "job_ids": merge(sim.demo_job_ids(), loaded.job_ids),
        }
        if "cache_ttl" not in explicit and "CERBY_CACHE_TTL" not in os.environ:
            demo["cache_ttl"] = DEMO_CACHE_TTL
        settings = Settings.model_validate({**settings.model_dump(), **demo, "demo": True})
    app = create_app(settings, redactor, state, web_config=web, keys=keys)
    ssl_context = web.ssl_context() if web is not None else None
    listeners = [(settings.listen_address, app)]
    if keys is not None and settings.webhook_listen_address is not None:
        listeners.append(
            (settings.webhook_listen_address, create_webhook_app(app, settings.webhook_path))
        )
    runners = await _listen(listeners, ssl_context)
    if runners is None:
        if simulator is not None:
            await simulator.close()
        return 1
    bound = runners[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum, stop)
    _log_started(settings, loaded, bound, web, keys)
    if simulator is not None and signing_key is not None:
        simulator.deliver_to(_demo_delivery(settings, bound, web, signing_key))
    await stop.wait()
    for runner, _ in reversed(runners):
        await runner.cleanup()
    if simulator is not None:
        await simulator.close()
    log.info("stopped")
    return 0


async def _listen(
    listeners: list[tuple[str, aiohttp_web.Application]], ssl_context: ssl.SSLContext | None
) -> list[tuple[aiohttp_web.AppRunner, int]] | None:
    """Start every listener, or none: one line and None if an address cannot be had."""
    runners: list[tuple[aiohttp_web.AppRunner, int]] = []
    for address, served in listeners:
        host, port = parse_listen_address(address)
        try:
            runners.append(await start_server(served, host, port, ssl_context))
        except OSError as exc:
            print(f"cerby-exporter: cannot listen on {address}: {exc.strerror}", file=sys.stderr)
            for runner, _ in reversed(runners):
                await runner.cleanup()
            return None
    return runners


def _log_started(
    settings: Settings,
    loaded: Loaded,
    bound: int,
    web: WebConfigSource | None,
    keys: KeysSource | None,
) -> None:
    summary = " ".join(f"{k}={v}" for k, v in effective(settings).items() if k not in ("job_ids",))
    log.info(
        "cerby-exporter %s listening on %s (port %d); %d job IDs tracked; %s",
        __version__,
        settings.listen_address,
        bound,
        len(settings.job_ids) if settings.demo else len(loaded.job_ids),
        summary,
    )
    if web is not None:
        log.info(
            "web config %s: TLS %s, basic auth %s",
            settings.web_config_file,
            "on" if web.tls_enabled else "off",
            "on" if web.basic_auth_enabled else "off",
        )
    if keys is not None:
        log.info(
            "webhook receiver on %s (%s)",
            settings.webhook_path,
            settings.webhook_listen_address or settings.listen_address,
        )
    if settings.demo:
        scheme = "https" if web is not None and web.tls_enabled else "http"
        log.info("demo workspace: open %s://localhost:%d/ to see its jobs", scheme, bound)


def _demo_delivery(
    settings: Settings, port: int, web: WebConfigSource | None, signing_key: Any
) -> WebhookDelivery:
    """The simulated workspace announces its jobs to this exporter, as Cerby's webhooks would,
    and starts new ones that nothing else names."""
    from cerby_exporter.simulator import DEMO_WEBHOOK_KEY_ID, WebhookDelivery

    tls = web is not None and web.tls_enabled
    return WebhookDelivery(
        url=f"{'https' if tls else 'http'}://127.0.0.1:{port}{settings.webhook_path}",
        key_id=DEMO_WEBHOOK_KEY_ID,
        private_key=signing_key,
        new_job_every=DEMO_NEW_JOB_SECONDS,
        tls_verify=not tls,
    )


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    log.info("received %s, stopping", signal.Signals(signum).name)
    stop.set()
