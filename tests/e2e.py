"""End-to-end helpers: exporters and simulators as real processes (for signals, exit codes,
every byte a process printed, memory readings) and reading an exposition back as numbers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without any CERBY_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERBY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


class ExporterProcess:
    """`python -m cerby_exporter ARGS` on a free loopback port, output kept in files."""

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        *,
        scheme: str = "http",
    ) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.stdout_path = workdir / f"exporter-{self.port}.out"
        self.stderr_path = workdir / f"exporter-{self.port}.err"
        self.command = [
            sys.executable,
            "-m",
            "cerby_exporter",
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            *args,
        ]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=err, env=clean_env(env), cwd=workdir
            )

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Until the port takes connections (TLS or not), or fail with the process's output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"exporter did not listen within {timeout}s: {self.stderr()}")

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until /readyz answers 200 (plain HTTP only)."""
        self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"exporter not ready within {timeout}s: {self.stderr()}")

    def terminate(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SimulatorProcess:
    """`python -m cerby_exporter.simulator ARGS`, started and read until it listens."""

    def __init__(self, args: Sequence[str]) -> None:
        command = [
            sys.executable,
            "-m",
            "cerby_exporter.simulator",
            "--listen",
            "127.0.0.1:0",
            *args,
        ]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise AssertionError(f"simulator did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        self.root = self.base_url.removesuffix("/api/v1")

    def stats(self) -> dict[str, object]:
        answer = httpx.get(self.root + "/_sim/stats", timeout=10).json()
        assert isinstance(answer, dict)
        return answer

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_samples(text: str) -> Samples:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, or None when the exposition does not have it."""
    return samples.get((name, tuple(sorted(labels.items()))))


def job_ids_with(samples: Samples, name: str) -> set[str]:
    """The `job_id` label values that `name` has samples for."""
    return {dict(labels)["job_id"] for (n, labels) in samples if n == name}
