"""End-to-end helpers: exporters and simulators as real processes (for signals, exit codes,
every byte a process printed, memory readings) and reading an exposition back as numbers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


def threads(pid: int) -> int:
    """Threads of a process, from /proc/PID/status: what a connection must not cost."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Threads for {pid}")


def connections_held(port: int) -> int:
    """TCP connections to loopback `port` that its server has accepted and not yet closed,
    from /proc/net/tcp: those still in the listen backlog, or closed by the server, have no
    socket file (inode 0); the listening socket itself is left out."""
    held = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rpartition(":")[2], 16)
        if local_port == port and fields[3] != "0A" and fields[9] != "0":
            held += 1
    return held


@dataclass(frozen=True)
class Exchange:
    """What came back on one raw connection, and whether the exporter ended it."""

    received: bytes
    closed: bool
    """The exporter closed the connection (end of stream or reset) before the read timed out;
    False means it was still open, waiting for more."""

    @property
    def statuses(self) -> list[int]:
        """Status codes of the responses received, in order."""
        return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", self.received)]


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> Exchange:
    """Everything the peer sends until it closes the connection or `timeout` seconds pass: a
    request that hangs shows as `closed=False`, never as a test that hangs."""
    deadline = time.monotonic() + timeout
    received = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return Exchange(received, closed=True)
        if not chunk:
            return Exchange(received, closed=True)
        received += chunk
    return Exchange(received, closed=False)


def raw_exchange(port: int, request: bytes, timeout: float = 5.0) -> Exchange:
    """Send `request` as given on a new loopback connection and read what comes back. The
    exporter may answer and close before all of a refused request is sent: what it answered
    is read all the same."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return read_until_closed(sock, timeout)


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

    def wait_listening(self, timeout: float = 20.0, interval: float = 0.05) -> None:
        """Until the port takes connections (TLS or not), or fail with the process's output.
        The benchmarks poll with a short `interval` to time the start-up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {self.stderr()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(interval)
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
