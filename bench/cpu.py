"""Where a rotation's time goes: CPU per rotation in each process, beside the raw chain's.

Wall-clock rates on a shared 2-core machine move with whatever else runs; the CPU time each
process spends per operation barely does. For a fixed number of rotations at 64 in flight,
this reads the user+system time of the ledger service process and of nats-server (from
``/proc/<pid>/stat``) and of the client (this process), and does the same for the raw chain
(direct get + compare-and-set publish + ES256 sign, no service hop). Linux only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from bench.common import Report, Row, Stat, cpu_seconds, nats_server, service_processes, wait_for_service
from bench.rotation import FAMILIES, _ledger_ops, _raw_rotation, _raw_stream
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.connection import connect


def _cpu(pid: int) -> float:
    seconds = cpu_seconds([pid])
    if seconds is None:
        raise RuntimeError(f"no CPU time for PID {pid} (needs Linux /proc)")
    return seconds


async def _spend(
    op: Callable[[int], Awaitable[None]], per_chain: int, pids: dict[str, int]
) -> dict[str, float]:
    """Run ``per_chain`` operations on each of the 64 chains; CPU microseconds per operation."""
    before = {name: _cpu(pid) for name, pid in pids.items()}
    mine = time.process_time()

    async def chain(i: int) -> None:
        for _ in range(per_chain):
            await op(i)

    await asyncio.gather(*(chain(i) for i in range(FAMILIES)))
    count = per_chain * FAMILIES
    spent = {name: (_cpu(pid) - before[name]) / count * 1e6 for name, pid in pids.items()}
    spent["client"] = (time.process_time() - mine) / count * 1e6
    return spent


def _median(runs: list[dict[str, float]], name: str) -> Stat:
    return Stat.of([r[name] for r in runs])


async def run(report: Report, reps: int, per_chain: int, data_dir: Path) -> None:
    if not Path("/proc/self/stat").exists():
        print("cpu: skipped (needs Linux /proc)")
        return
    with nats_server() as server:
        assert server.process is not None
        nats_pid = server.process.pid
        nc = await connect(server.url, "bench-raw")
        await _raw_stream(nc)
        key = ec.generate_private_key(ec.SECP256R1())

        async def raw(i: int) -> None:
            await _raw_rotation(nc, f"f{i}", key)

        settings = Settings(nats_url=server.url, data_dir=data_dir)
        with service_processes(settings, 1) as procs:
            await wait_for_service(server.url)
            async with await LedgerClient.connect(server.url) as client:
                rotate, _ = await _ledger_ops(client, FAMILIES)
                raw_runs, ledger_runs = [], []
                for _ in range(reps):  # interleaved: both see the same machine
                    raw_runs.append(await _spend(raw, per_chain, {"nats-server": nats_pid}))
                    ledger_runs.append(
                        await _spend(rotate, per_chain, {"service": procs[0].pid, "nats-server": nats_pid})
                    )
        await nc.drain()
    for runs in (raw_runs, ledger_runs):
        for r in runs:
            r["total"] = sum(r.values())
    raw_total = _median(raw_runs, "total")
    report.add(Row("cpu", "raw chain: bench process", "us/op", _median(raw_runs, "client")))
    report.add(Row("cpu", "raw chain: nats-server", "us/op", _median(raw_runs, "nats-server")))
    report.add(Row("cpu", "raw chain: total", "us/op", raw_total))
    for name in ("client", "service", "nats-server"):
        report.add(Row("cpu", f"ledger rotate: {name}", "us/op", _median(ledger_runs, name)))
    report.add(
        Row(
            "cpu",
            "ledger rotate: total",
            "us/op",
            _median(ledger_runs, "total"),
            "raw chain total",
            raw_total,
            note="CPU per rotation, 64 in flight",
        )
    )
