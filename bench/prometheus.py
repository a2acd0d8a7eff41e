"""A real Prometheus scrapes the exporter: the gzip body and both formats read as intended.

Prometheus (Debian's `prometheus`, /usr/bin/prometheus) scrapes the exporter every second on
loopback; its own `scrape_samples_scraped` and a few queries must agree with what the exporter
serves. Prometheus asks for OpenMetrics first and always accepts gzip, so this reads the answer
that a compressed job part, deflated once, and a tail deflated per scrape make.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import urllib.parse
from pathlib import Path

from bench import common
from bench.common import table


def _query(port: int, expr: str) -> float | None:
    path = "/api/v1/query?query=" + urllib.parse.quote(expr)
    with common.Scraper(port, timeout=10) as client:
        status, body, _ = client.get(path)
    if status != 200:
        return None
    result = json.loads(body)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def run(jobs: int = 100, wait: float = 20.0) -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        return "Prometheus check: no prometheus binary found (apt-get install prometheus)\n"
    with contextlib.ExitStack() as stack, common.temp_dir() as root:
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        exporter = common.start_exporter(
            stack, simulator.base_url, common.bulk_job_ids(jobs), flags=["--cache-ttl", "2"]
        )
        port = common.free_port()
        config = root / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: cerby-exporter\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n",
            encoding="utf-8",
        )
        child = common.spawn(
            "prometheus",
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={Path(root) / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stack,
        )
        common.wait_http(port, "/-/ready", child)
        deadline = time.monotonic() + wait
        rows: list[list[object]] = []
        while time.monotonic() < deadline:
            time.sleep(1)
            tracked = _query(port, "cerby_tracked_jobs")
            if tracked is not None and _query(port, "count(cerby_job_info)") == jobs:
                break
        with common.Scraper(exporter.port) as scraper:
            _, body, _ = scraper.get("/metrics", common.scrape_headers(gzip=False))
        served = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
        checks = [
            ("up", "up", 1.0),
            ("cerby_tracked_jobs", "cerby_tracked_jobs", float(jobs)),
            ("jobs with cerby_job_info", "count(cerby_job_info)", float(jobs)),
            ("cerby_job_status series", "count(cerby_job_status)", float(jobs * 7)),
            ("jobs in status 1", "count(cerby_job_status == 1)", float(jobs)),
            ("samples scraped (served, text)", "scrape_samples_scraped", float(served)),
        ]
        for name, expr, want in checks:
            got = _query(port, expr)
            rows.append([name, expr, got if got is not None else "-", want])
    return table(
        ["check", "PromQL", "Prometheus", "expected"],
        rows,
        f"A real Prometheus ({binary}) scraping {jobs} jobs every second, gzip and OpenMetrics "
        "as it negotiates them",
    )
