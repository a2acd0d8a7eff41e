"""Load, the short version of `python -m bench.load`: 20 scrapers back to back against 1000
tracked jobs. No failed response, memory flat, and Cerby still asked once per job per TTL."""

from __future__ import annotations

from bench.load import run
from cerby_exporter.simulator import bulk_jobs

SECONDS = 10.0
CACHE_TTL = 2.0


def test_twenty_scrapers_against_a_thousand_jobs() -> None:
    result = run(
        jobs=1000, scrapers=20, seconds=SECONDS, warmup=4.0, cache_ttl=CACHE_TTL, window=3.0
    )
    report = result.render()
    assert result.failures == [], report
    assert result.requests >= 100, report  # the load was real: 20 scrapers, 10 s
    assert result.running_jobs == 500

    # Memory is flat: the exporter's RSS over the last 3 s is that of the first 3 s (after 4 s
    # of the same load, two cache refreshes), within 2 MiB; the two differ by 0.2 MiB at most
    # here, refreshes every 2 s included. Keeping 2 KiB a scrape (some 1800 scrapes between the
    # windows) would fail.
    first, last = result.rss_window(first=True), result.rss_window(first=False)
    assert len(result.rss) >= 15, report
    assert last <= first + 2.0, report

    # One API call per job per TTL, however many scrapers ask: finished jobs (cached for an hour)
    # cost nothing, and no running job is fetched more often than its TTL allows.
    status = {job_id: job.timeline[0][1]["status"] for job_id, job in bulk_jobs(1000).items()}
    finished = [n for job, n in result.calls_by_job.items() if status[job] == "finished"]
    running = [n for job, n in result.calls_by_job.items() if status[job] == "running"]
    assert len(finished) == len(running) == 500
    assert set(finished) == {0}, report
    assert max(running) <= SECONDS / CACHE_TTL + 1, report
    assert min(running) >= 1, report
    assert 0.6 * result.ideal_calls <= result.api_calls <= result.ideal_calls + 500, report
