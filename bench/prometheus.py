"""A real Prometheus scrapes the exporter: the gzip body and both formats read as intended.

Prometheus (Debian's `prometheus`) scrapes the exporter every second on loopback; its own
`scrape_samples_scraped` and a few queries must agree with what the exporter serves.
Prometheus asks for OpenMetrics first and always accepts gzip, so this reads the answer that a
compressed job part, deflated once, and a tail stored after it make.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import urllib.parse

from bench import common
from bench.common import table
from tests.support import http_json, prometheus


def _query(url: str, expr: str) -> float | None:
    answer = http_json(f"{url}/api/v1/query?query={urllib.parse.quote(expr)}")
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def run(jobs: int = 100, wait: float = 30.0) -> str:
    if shutil.which("prometheus") is None:
        return "Prometheus check: no prometheus binary found (make tools)\n"
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.temp_dir())
        simulator = common.start_simulator(stack, jobs, latency=0.0)
        exporter = common.start_exporter(
            stack, simulator, common.bulk_job_ids(jobs), flags=["--cache-ttl", "2"]
        )
        config = root / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: cerby-exporter\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n",
            encoding="utf-8",
        )
        url = stack.enter_context(prometheus(config, root))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(1)
            if _query(url, "count(cerby_job_info)") == jobs:
                break
        time.sleep(2)  # a scrape or two more, so scrape_samples_scraped is of a full answer
        with common.Scraper(exporter.port) as scraper:
            headers = common.scrape_headers(gzip=False, openmetrics=True)
            _, body, _ = scraper.get("/metrics", headers)
        served = sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))
        checks = [
            ("up", "up", 1.0),
            ("cerby_tracked_jobs", "sum(cerby_tracked_jobs)", float(jobs)),
            ("jobs with cerby_job_info", "count(cerby_job_info)", float(jobs)),
            ("cerby_job_status series", "count(cerby_job_status)", float(jobs * 7)),
            ("jobs in status 1", "count(cerby_job_status == 1)", float(jobs)),
            ("samples scraped (served, OpenMetrics)", "scrape_samples_scraped", float(served)),
        ]
        rows: list[list[object]] = []
        for name, expr, want in checks:
            got = _query(url, expr)
            rows.append([name, expr, got if got is not None else "-", want])
    return table(
        ["check", "PromQL", "Prometheus", "expected"],
        rows,
        f"A real Prometheus scraping {jobs} jobs every second, gzip and OpenMetrics as it "
        "negotiates them",
    )
