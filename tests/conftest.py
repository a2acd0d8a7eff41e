"""Fixtures: a simulated Cerby on a real socket, exporters serving in-process, a clean env."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cerby_exporter.settings import Settings
from cerby_exporter.simulator import Simulator, Workspace
from tests.support import API_KEY, Running, small_workspace, start_exporter


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator(Workspace(small_workspace(), API_KEY)) as sim:
        yield sim


@pytest.fixture
def exporter_factory() -> Iterator[Callable[..., Running]]:
    """Start exporters with given settings; every one is stopped at the end of the test."""
    started: list[Running] = []

    def factory(**values: Any) -> Running:
        running = start_exporter(Settings(**values))
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()
    logging.getLogger().handlers.clear()


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CERBY_* variable from the calling shell leaks into a test's settings."""
    for name in list(os.environ):
        if name.startswith("CERBY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path
