"""Webhook deliveries: how many verified, durably stored deliveries a second the exporter takes,
how long each answer takes, and whether every acknowledged event survives a kill -9.

Deliveries are signed before the clock starts (the sender's cost is not the exporter's), sent by
`--senders` concurrent keep-alive clients for `--seconds`; then a last burst is cut by SIGKILL,
and the state file is read back: every event answered 2xx must be in it. Beside it, the cost
of signature verification alone, in this process, on the same bodies.

    python -m bench.webhooks [--seconds 10] [--senders 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from bench import common
from cerby_exporter.signatures import Ed25519Key, Keys, verify
from tests.support import ExporterProcess, SimulatorProcess, WebhookKeys, envelope

API_KEY = "bench-webhooks-key"
JOB_POOL = 500
"""Distinct jobs the events name: each is fetched once, then found fresh."""


def deliveries(
    keys: WebhookKeys, job_ids: list[str], count: int
) -> list[tuple[bytes, dict[str, str]]]:
    signed = []
    for n in range(count):
        body = envelope(job_ids[n % len(job_ids)], event_id=str(uuid.uuid4()))
        signed.append((body, keys.headers(body)))
    return signed


async def send(
    url: str, batch: list[tuple[bytes, dict[str, str]]], senders: int, seconds: float | None
) -> tuple[list[float], list[bytes], int]:
    """Latencies of 2xx answers, the bodies acknowledged, and the failures. aiohttp's client:
    the sender must cost less than the receiver, or it measures itself."""
    latencies: list[float] = []
    acknowledged: list[bytes] = []
    failures = 0
    queue = iter(batch)
    deadline = time.monotonic() + seconds if seconds is not None else float("inf")

    async def sender(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for body, headers in queue:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                    ok = answer.status == 200
            except (aiohttp.ClientError, OSError):
                failures += 1
                continue
            if ok:
                latencies.append(time.perf_counter() - started)
                acknowledged.append(body)
            else:
                failures += 1

    connector = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(sender(session) for _ in range(senders)), return_exceptions=True)
    return latencies, acknowledged, failures


def event_id(body: bytes) -> str:
    return str(json.loads(body)["event_id"])


def verify_only(keys: WebhookKeys, batch: list[tuple[bytes, dict[str, str]]]) -> float:
    """Verifications a second, in this process, on one core."""
    installed = Keys.of(Ed25519Key(keys.ed25519_id, keys.private_key.public_key()))
    started = time.perf_counter()
    for body, headers in batch:
        assert verify(body, headers, installed, time.time()).result == "verified"
    return len(batch) / (time.perf_counter() - started)


def run(seconds: float, senders: int) -> str:
    with (
        tempfile.TemporaryDirectory() as scratch,
        SimulatorProcess(
            ["--api-key", API_KEY, "--scenario", "bulk", "--jobs", str(JOB_POOL)]
        ) as sim,
    ):
        work = Path(scratch)
        keys = WebhookKeys(work / "keys.yaml").write()
        job_ids = common.bulk_job_ids(JOB_POOL)
        state = work / "state.sqlite"
        args = ["--api-url", sim.base_url, "--webhook.keys-file", str(keys.path),
                "--state.path", str(state), "--log.level", "warning"]  # fmt: skip
        batch = deliveries(keys, job_ids, int(seconds * 4000) + 2000)
        verify_rate = verify_only(keys, batch[:2000])
        with ExporterProcess(args, work, {"CERBY_API_KEY": API_KEY}) as exporter:
            exporter.wait_ready()
            url = exporter.url + "/webhooks/cerby"
            asyncio.run(send(url, batch[:200], senders, None))  # connections and job fetches warm
            started = time.monotonic()
            latencies, acknowledged, failures = asyncio.run(
                send(url, batch[200:], senders, seconds)
            )
            elapsed = time.monotonic() - started
            rest = batch[200 + len(acknowledged) + failures :]

            async def burst_then_kill() -> tuple[list[float], list[bytes], int]:
                sending = asyncio.ensure_future(send(url, rest, senders, None))
                await asyncio.sleep(1.0)
                exporter.proc.send_signal(signal.SIGKILL)
                return await sending

            _, killed_acks, _ = asyncio.run(burst_then_kill())
            exporter.proc.wait(10)
        with sqlite3.connect(state) as db:
            stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
    warm = [body for body, _ in batch[:200]]
    everything = [event_id(body) for body in [*warm, *acknowledged, *killed_acks]]
    lost = sum(1 for e in everything if e not in stored)
    rows = [
        [
            f"{len(latencies) / elapsed:,.0f}",
            f"{common.ms(statistics.median(latencies)):.2f}",
            f"{common.ms(statistics.quantiles(latencies, n=100)[98]):.2f}",
            failures,
            f"{len(killed_acks):,}",
            lost,
            f"{verify_rate:,.0f}",
        ]
    ]
    return common.table(
        [
            "deliveries/s (stored, 2xx)",
            "p50 ms",
            "p99 ms",
            "non-2xx",
            "acked in the burst cut by kill -9",
            "acked but lost",
            "verifications/s alone",
        ],
        rows,
        f"Webhook deliveries: {senders} senders for {seconds:g} s, ed25519, "
        f"SQLite WAL synchronous=FULL",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=32)
    args = parser.parse_args(argv)
    common.emit(run(args.seconds, args.senders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
