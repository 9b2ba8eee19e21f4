"""Revocation reach: revoke acknowledged -> applied at each of 8 verifiers, under rotation load.

Processes as in production: one ledger service, one broadcaster, one process hosting the
8 verifiers; this process drives the load and reads the verifiers' receipts (their
``applied_at`` is taken when the notice is folded in, on the same machine's clock).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from nats.aio.msg import Msg

from bench.common import Report, Row, Stat, nats_server, percentile, service_processes, wait_for_service
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.connection import connect

VERIFIERS = 8
REVOCATIONS = 40


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def run(report: Report, reps: int, seconds: float, data_dir: Path) -> None:
    with nats_server() as server:
        settings = Settings(nats_url=server.url, data_dir=data_dir)
        with service_processes(settings, 1):
            await wait_for_service(server.url)
            broadcaster = _spawn(["session_ledger.cli", "broadcast", "--nats-url", server.url])
            host = _spawn(["bench.verifier_host", server.url, str(VERIFIERS)])
            try:
                assert host.stdout is not None and broadcaster.stdout is not None
                started = await asyncio.wait_for(asyncio.to_thread(broadcaster.stdout.readline), 60)
                assert started.startswith("ready"), started  # measure the steady state, not the start
                ready = await asyncio.wait_for(asyncio.to_thread(host.stdout.readline), 60)
                assert ready.strip() == "ready", ready
                from_request, from_ack = await _measure(server.url)
            finally:
                for proc in (host, broadcaster):
                    if proc.stdin:
                        proc.stdin.close()
                    proc.terminate()
                    proc.wait(15)
    note = f"{len(from_ack)} receipts under rotation load; negative = applied before the ack arrived"
    for q in (0.5, 0.99):
        name = f"revoke request -> applied, p{q * 100:.0f}"
        report.add(Row("reach", name, "ms", Stat.of([percentile(from_request, q)])))
    p50, p99 = percentile(from_ack, 0.5), percentile(from_ack, 0.99)
    report.add(Row("reach", f"revoke ack -> applied at {VERIFIERS} verifiers p50", "ms", Stat.of([p50])))
    name = f"revoke ack -> applied at {VERIFIERS} verifiers p99"
    report.add(Row("reach", name, "ms", Stat.of([p99]), target="< 10 ms", met=p99 < 10, note=note))


async def _measure(url: str) -> tuple[list[float], list[float]]:
    applied: dict[int, list[float]] = {}
    nc = await connect(url, "bench-reach")

    async def on_receipt(msg: Msg) -> None:
        body = json.loads(msg.data)
        at = datetime.fromisoformat(body["applied_at"]).timestamp()
        applied.setdefault(body["revoke_seq"], []).append(at)

    await nc.subscribe("ledger.receipt.>", cb=on_receipt)
    async with await LedgerClient.connect(url) as client:
        targets = await asyncio.gather(*(client.start_session(f"victim{i}") for i in range(REVOCATIONS)))
        load = await asyncio.gather(*(client.start_session(f"load{i}") for i in range(16)))
        tokens = [p.refresh_token for p in load]
        stop = asyncio.Event()

        async def churn(i: int) -> None:
            while not stop.is_set():
                tokens[i] = (await client.rotate(tokens[i])).refresh_token

        background = [asyncio.create_task(churn(i)) for i in range(len(tokens))]
        from_request: list[float] = []
        from_ack: list[float] = []
        try:
            for target in targets:
                requested = time.time()
                rev = await client.revoke_session(target.sid, "admin")
                acked = time.time()
                deadline = time.monotonic() + 3
                while len(applied.get(rev.seq or -1, [])) < VERIFIERS and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                times = applied.get(rev.seq or -1, [])
                from_request += [(at - requested) * 1000 for at in times]
                from_ack += [(at - acked) * 1000 for at in times]
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*background, return_exceptions=True)
    await nc.drain()
    return from_request, from_ack
