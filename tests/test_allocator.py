"""The allocator settings: which tunables the exporter starts with, and that glibc takes them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cerby_exporter.allocator import RESTARTED, is_glibc, rerunnable, tunables
from tests.e2e import ExporterProcess, clean_env

OURS = "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=1048576"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, OURS),
        ({"PATH": "/bin"}, OURS),
        # Other tunables are kept, ours added after them.
        ({"GLIBC_TUNABLES": "glibc.malloc.check=3"}, f"glibc.malloc.check=3:{OURS}"),
        ({"GLIBC_TUNABLES": " glibc.malloc.check=3: "}, f"glibc.malloc.check=3:{OURS}"),
        ({"GLIBC_TUNABLES": ""}, OURS),
        ({"GLIBC_TUNABLES": ":"}, OURS),
        # A name without a value sets nothing in glibc: ours is still added.
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max"}, f"glibc.malloc.arena_max:{OURS}"),
        # An operator's value for one of ours wins.
        (
            {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"},
            "glibc.malloc.tcache_count=7:glibc.malloc.arena_max=1"
            ":glibc.malloc.mmap_threshold=1048576",
        ),
        (
            {"MALLOC_ARENA_MAX": "4"},
            "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=1048576",
        ),
        (
            {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "4"},
            "glibc.malloc.tcache_count=0",
        ),
        # Everything already set: nothing to do, which is what ends the restart.
        ({"GLIBC_TUNABLES": OURS}, None),
        ({"GLIBC_TUNABLES": f"glibc.malloc.check=3:{OURS}"}, None),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=1", "MALLOC_ARENA_MAX": "2",
             "MALLOC_MMAP_THRESHOLD_": "0"},
            None,
        ),
    ],
)  # fmt: skip
def test_tunables(environ: dict[str, str], expected: str | None) -> None:
    assert tunables(environ) == expected


@pytest.mark.parametrize(
    "environ",
    [{}, {"GLIBC_TUNABLES": "glibc.malloc.check=3"}, {"MALLOC_ARENA_MAX": "8"}],
)
def test_tunables_are_idempotent(environ: dict[str, str]) -> None:
    first = tunables(environ)
    assert first is not None
    assert tunables({**environ, "GLIBC_TUNABLES": first}) is None


def test_only_a_command_line_that_names_a_file_is_run_again(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text("")
    assert rerunnable(str(script)) is True
    assert rerunnable(sys.argv[0]) is True  # pytest's own entry point
    assert rerunnable("-c") is False  # python -c CODE
    assert rerunnable("-") is False  # a script on standard input, already consumed
    assert rerunnable("") is False  # an interactive session
    assert rerunnable(str(tmp_path / "gone.py")) is False


def loader() -> str:
    """The dynamic loader this interpreter runs under: the glibc whose parser we check."""
    maps = Path("/proc/self/maps").read_text()
    found = re.search(r"(/\S*/ld-linux[^/\s]*\.so\.\d+)$", maps, re.MULTILINE)
    assert found is not None, "no glibc loader mapped"
    return found.group(1)


def effective_tunables(value: str) -> dict[str, int]:
    """What glibc makes of a GLIBC_TUNABLES value, as its loader lists it."""
    listed = subprocess.run(
        [loader(), "--list-tunables"],
        env={"GLIBC_TUNABLES": value},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        name: int(number, 16)
        for name, number in re.findall(r"^(glibc\.malloc\.\w+): (0x[0-9a-f]+)", listed, re.M)
    }


def test_this_machine_runs_glibc() -> None:
    """The image (Debian) and CI are glibc systems; the tests below depend on it."""
    assert is_glibc() is True


def test_glibc_reads_our_tunables_as_meant() -> None:
    value = tunables({})
    assert value is not None
    effective = effective_tunables(value)
    assert effective["glibc.malloc.arena_max"] == 1
    assert effective["glibc.malloc.mmap_threshold"] == 1 << 20
    assert effective_tunables("")["glibc.malloc.arena_max"] == 0  # unset


FREED_TO_FASTBINS = """
import ctypes, sys
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
blocks = [libc.malloc(120) for _ in range(7)]
before = libc.mallinfo2().fsmblks
for block in blocks:
    libc.free(block)
print(libc.mallinfo2().fsmblks - before)
"""


def freed_to_fastbins(glibc_tunables: str) -> int:
    """Bytes of seven freed 128-byte chunks that reach the shared fast bins.

    With per-thread caches on, all seven stay in the freeing thread's cache (0 bytes); with
    them off, all go back to the arena (896 bytes).
    """
    done = subprocess.run(
        [sys.executable, "-c", FREED_TO_FASTBINS],
        env={**exporter_env(), "GLIBC_TUNABLES": glibc_tunables},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_glibc_switches_off_the_per_thread_caches() -> None:
    value = tunables({})
    assert value is not None
    assert freed_to_fastbins("") == 0
    assert freed_to_fastbins(value) == 7 * 128


def exporter_env(**extra: str) -> dict[str, str]:
    env = clean_env()
    for name in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        env.pop(name, None)
    env.update(extra)
    return env


def started_with(pid: int) -> bytes:
    """The environment the process was exec'd with, raw.

    Only the start of GLIBC_TUNABLES is reliable here: glibc up to 2.38 cuts that string where
    it is stored, after reading it, and this is where /proc reads it from.
    """
    return b"\0" + Path(f"/proc/{pid}/environ").read_bytes()


def test_the_exporter_restarts_itself_with_the_tunables(tmp_path: Path) -> None:
    """Same PID (an exec, not a child), the same arguments, and glibc's tunables now set."""
    exporter = ExporterProcess(["--demo", "--log.level", "debug"], tmp_path, exporter_env())
    try:
        exporter.wait_ready()
        assert b"\0GLIBC_TUNABLES=glibc.malloc.tcache_count=0" in started_with(exporter.proc.pid)
        cmdline = Path(f"/proc/{exporter.proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [arg.decode() for arg in cmdline] == exporter.command
    finally:
        assert exporter.terminate() == 0
    log = exporter.stderr()
    assert f"glibc allocator tunables: {OURS}" in log
    # The first process had written nothing when it was replaced.
    assert log.count("glibc allocator tunables") == 1
    assert log.count("listening on") == 1


def test_the_restarted_process_never_restarts_again(tmp_path: Path) -> None:
    """In secure mode glibc drops tunables before the program sees them; asking again would
    loop for ever. The restarted process is marked, and takes its environment as it is."""
    exporter = ExporterProcess(
        ["--demo", "--log.level", "debug"],
        tmp_path,
        exporter_env(GLIBC_TUNABLES="glibc.malloc.check=0", **{RESTARTED: "1"}),
    )
    try:
        exporter.wait_ready()
        assert b"\0GLIBC_TUNABLES=glibc.malloc.check=0\0" in started_with(exporter.proc.pid)
    finally:
        assert exporter.terminate() == 0
    assert exporter.stderr().count('glibc allocator tunables: glibc.malloc.check=0"') == 1


def test_the_operators_tunables_are_kept(tmp_path: Path) -> None:
    exporter = ExporterProcess(
        ["--demo", "--log.level", "debug"],
        tmp_path,
        exporter_env(GLIBC_TUNABLES="glibc.malloc.tcache_count=3", MALLOC_ARENA_MAX="2"),
    )
    try:
        exporter.wait_ready()
        assert b"\0MALLOC_ARENA_MAX=2\0" in started_with(exporter.proc.pid)
    finally:
        assert exporter.terminate() == 0
    assert (
        "glibc allocator tunables: glibc.malloc.tcache_count=3:glibc.malloc.mmap_threshold=1048576"
        in exporter.stderr()
    )
