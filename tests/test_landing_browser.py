"""The landing page as a person on call sees it, rendered by a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from cerby_exporter.settings import Settings
from cerby_exporter.simulator import Simulator
from tests.support import FAILED, FINISHED, MISSING, RUNNING, settings_for, start_exporter

ARTIFACTS = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium(tmp_path: Path, *args: str) -> str:
    browser = shutil.which("chromium")
    assert browser is not None, "chromium is installed by `make tools`"
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_failures_come_first_and_the_page_renders_at_1400_px(
    simulator: Simulator, tmp_path: Path
) -> None:
    running = start_exporter(Settings(**settings_for(simulator)))
    try:
        deadline = time.monotonic() + 10
        while "fetch failed: not_found" not in running.get("/").text:
            assert time.monotonic() < deadline, "the warm-up never finished"
            time.sleep(0.1)
        dom = chromium(tmp_path, "--dump-dom", running.url + "/")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "landing.png"
        chromium(
            tmp_path, f"--screenshot={screenshot}", "--window-size=1400,900", running.url + "/"
        )
    finally:
        running.stop()
    rows = re.findall(r'<tr class="([^"]+)" data-rank="(\d)"><td>([0-9a-f-]{36})</td>', dom)
    assert [job_id for _, _, job_id in rows] == [FAILED, RUNNING, MISSING, FINISHED]
    assert [css for css, _, _ in rows] == ["removal failed", "in-flight", "no-data", "finished"]
    assert "error: ACCESS NOT REMOVED" in dom
    summary = re.search(r'<p class="summary" id="summary">(.*?)</p>', dom)
    assert summary is not None
    assert re.sub("<[^>]+>", "", summary.group(1)) == (
        "1 failed access removals · 1 failed · 1 failed and needing a person · "
        "1 in flight · 0 stale"
    )
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
