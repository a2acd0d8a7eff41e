"""`cerby-exporter`: parse flags, validate settings, serve until SIGTERM.

Bad input ends here with one line on stderr and exit code 2; nothing below this module has to
think about how a person reads an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from cerby_exporter import __version__, allocator, logs
from cerby_exporter.app import create_app
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
)

log = logging.getLogger("cerby_exporter")

EXIT_BAD_SETTINGS = 2
DEMO_CACHE_TTL = 5.0
"""The demo's jobs change within seconds; a minute's cache would hide most of it."""


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cerby-exporter",
        description="Prometheus exporter for Cerby automation jobs. Every flag can also be set "
        "as the CERBY_* environment variable shown; a flag wins over its variable.",
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
            parser.add_argument(
                flag, dest=name, metavar="VALUE", help=f"{help_text} (default: {default})"
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
    """The command: `argv` None means this process's own command line, which may be re-run."""
    args = vars(build_parser().parse_args(argv))
    check_only = bool(args.pop("check_config", False))
    try:
        loaded = load(args)
        if loaded.settings.web_config_file is not None:
            _check_web_config(loaded.settings.web_config_file)
    except SettingsError as exc:
        print(f"cerby-exporter: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if check_only:
        for name, value in effective(loaded.settings).items():
            print(f"{name} = {value}")
        print(f"job_ids_total = {len(loaded.job_ids)}")
        return 0
    if argv is None:
        allocator.restart_with_tunables()
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


def serve(loaded: Loaded, explicit: set[str]) -> int:
    """Run until SIGTERM or SIGINT; `explicit` names the settings given as flags."""
    settings = loaded.settings
    redactor = logs.Redactor()
    logs.configure(settings.log_level, settings.log_format, redactor)
    log.debug("glibc allocator tunables: %s", os.environ.get("GLIBC_TUNABLES", "none"))
    simulator = None
    if settings.demo:
        from cerby_exporter import simulator as sim

        key = secrets.token_urlsafe(24)
        redactor.add(key)
        simulator = sim.Simulator(sim.Workspace(sim.demo_jobs(), key)).start()
        demo: dict[str, Any] = {
            "api_url": simulator.base_url,
            "api_key": key,
            "job_ids": merge(sim.demo_job_ids(), loaded.job_ids),
        }
        if "cache_ttl" not in explicit and "CERBY_CACHE_TTL" not in _environ_names():
            demo["cache_ttl"] = DEMO_CACHE_TTL
        settings = Settings.model_validate({**settings.model_dump(), **demo, "demo": True})
    from cerby_exporter.server import Server

    host, port = parse_listen_address(settings.listen_address)
    web = None
    if settings.web_config_file is not None:
        from cerby_exporter.webconfig import WebConfigError, WebConfigSource

        try:
            web = WebConfigSource(settings.web_config_file)
        except WebConfigError as exc:  # changed since main() checked it
            print(f"cerby-exporter: {SettingsError('web_config_file', str(exc))}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
    app = create_app(settings, redactor)
    try:
        server = Server(
            app,
            host,
            port,
            ssl_context=web.ssl_context if web is not None and web.tls_enabled else None,
            authenticate=web.authenticate if web is not None else None,
            headers=web.headers if web is not None else None,
        )
    except OSError as exc:
        print(
            f"cerby-exporter: cannot listen on {settings.listen_address}: {exc.strerror}",
            file=sys.stderr,
        )
        app.close()
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    summary = " ".join(f"{k}={v}" for k, v in effective(settings).items() if k not in ("job_ids",))
    log.info(
        "cerby-exporter %s listening on %s (port %d); %d job IDs tracked; %s",
        __version__,
        settings.listen_address,
        server.port,
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
    if settings.demo:
        scheme = "https" if web is not None and web.tls_enabled else "http"
        log.info("demo workspace: open %s://localhost:%d/ to see its jobs", scheme, server.port)
    stop.wait()
    server.stop()
    if simulator is not None:
        simulator.stop()
    log.info("stopped")
    return _exit_now(0)


def _exit_now(code: int) -> NoReturn:
    """End the process once the answers in flight are sent and the logs written.

    A fetch still waiting on a hung Cerby would otherwise hold the interpreter's exit (it joins
    the fetch threads) for up to --request-timeout; nothing it could still bring back matters.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _environ_names() -> set[str]:
    import os

    return set(os.environ)
