"""Concurrency sweep (issue #17): ledger rotation at 1, 16 and 64 in flight on R1 with one
service process and with two (``service --workers 2``: one per core of this 2-core class), at
64 on a 3-node R3 cluster, and node-oidc-provider 9 side by side; one run, interleaved.

Every run starts on 64 fresh chains (ledger sessions / provider grants). Worker w of C
presents, in turn, the newest token of chains w, w+C, w+2C, ...: every level rotates all 64
chains, so no chain's history grows much longer than another's. ops/s is rotations answered
over wall time; p50 is the median latency of the run's own requests. The runs of one
repetition alternate in order (forward, then backward) so that a neighbour's load on the
shared cores falls on every target alike. A ratio ("x") is taken per repetition between runs
seconds apart, then its median and [min..max] are printed; the verdicts judge that median.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench import oidc_peer
from bench.common import (
    Report,
    Row,
    Stat,
    cpu_seconds,
    nats_server,
    percentile,
    service_processes,
    wait_for_service,
)
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.cluster import Cluster, ensure_stream_ready
from ledger.streaming.connection import connect

LEVELS = (1, 16, 64)
CHAINS = 64
MAX_OPS = 500_000  # per run, besides its time bound
NO_FALL = 0.97  # "does not fall from 16 to 64": within 3% (run-to-run noise on shared cores)
PEER_TARGET = 1.2


@dataclass
class Sample:
    ops_s: float
    p50_ms: float
    cpu_ms: dict[str, float]  # CPU per rotation: each group of serving processes, and "bench"


@dataclass(eq=False)  # identity: one per serving setup
class Target:
    name: str
    seed: Callable[[int], Awaitable[list[str]]]  # n fresh chains -> their first tokens
    rotate: Callable[[str], Awaitable[str]]  # newest token -> its successor
    pids: dict[str, list[int]]  # the serving processes by role (CPU accounting)
    samples: dict[int, list[Sample]] = field(default_factory=dict)

    def stat(self, level: int, what: str = "ops_s") -> Stat:
        return Stat.of([getattr(s, what) for s in self.samples[level]])


async def measure(target: Target, level: int, seconds: float) -> Sample:
    tokens = await target.seed(CHAINS)
    latencies: list[float] = []
    cpu0 = _cpu(target)
    started = time.perf_counter()
    stop_at = started + seconds

    async def worker(w: int) -> None:
        mine = range(w, CHAINS, level)
        k = 0
        while time.perf_counter() < stop_at and len(latencies) < MAX_OPS:
            i = mine[k % len(mine)]
            k += 1
            t = time.perf_counter()
            tokens[i] = await target.rotate(tokens[i])
            latencies.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker(w) for w in range(level)))
    elapsed = time.perf_counter() - started
    cpu1, n = _cpu(target), max(1, len(latencies))
    cpu_ms = {role: (cpu1[role] - cpu0[role]) * 1000 / n for role in cpu0 if role in cpu1}
    p50 = percentile(latencies, 0.5) if latencies else float("nan")  # nothing answered in time
    return Sample(len(latencies) / elapsed, p50, cpu_ms)


def _cpu(target: Target) -> dict[str, float]:
    """CPU seconds so far of each role's processes (a role is left out where /proc is not)."""
    out = {"bench": time.process_time()}
    for role, pids in target.pids.items():
        if (seconds := cpu_seconds(pids)) is not None:
            out[role] = seconds
    return out


def ledger_target(name: str, client: LedgerClient, pids: dict[str, list[int]]) -> Target:
    async def seed(n: int) -> list[str]:
        pairs = await asyncio.gather(*(client.start_session(f"sweep-{i}") for i in range(n)))
        return [p.refresh_token for p in pairs]

    async def rotate(token: str) -> str:
        return (await client.rotate(token)).refresh_token

    return Target(name, seed, rotate, pids)


async def _ledger(
    stack: AsyncExitStack, settings: Settings, nats_pids: list[int], workers: int = 1
) -> Target:
    """``workers`` service processes in one queue group (what ``service --workers N`` runs)."""
    procs = stack.enter_context(service_processes(settings, workers))
    url = settings.nats_url
    await wait_for_service(url)
    client = await stack.enter_async_context(await LedgerClient.connect(url))
    name = f"ledger R{settings.replicas}" + (f" x{workers}" if workers > 1 else "")
    return ledger_target(name, client, {"service": [p.pid for p in procs], "nats": nats_pids})


async def _two_workers(stack: AsyncExitStack, data_dir: Path) -> Target:
    """Two service processes on their own nats-server (sharing one would put all three
    processes in one queue group and blur both figures)."""
    server = stack.enter_context(nats_server())
    assert server.process is not None
    settings = Settings(nats_url=server.url, data_dir=data_dir / "r1x2")
    return await _ledger(stack, settings, [server.process.pid], workers=2)


async def _r3(stack: AsyncExitStack, data_dir: Path) -> Target:
    """The same service on a 3-node loopback cluster (ledger.streaming.cluster), stream R3."""
    cluster = Cluster(data_dir / "cluster", size=3)
    stack.callback(cluster.stop)  # before start: a node that started is stopped even if another fails
    await asyncio.to_thread(cluster.start)  # Cluster.start runs its own event loop
    settings = Settings(nats_url=cluster.url, replicas=3, data_dir=data_dir / "r3")
    await ensure_stream_ready(settings)
    target = await _ledger(stack, settings, [s.process.pid for s in cluster.servers if s.process])
    nc = await connect(cluster.url, "bench-sweep-probe")
    try:
        replicas = (await nc.jetstream().stream_info(settings.stream)).config.num_replicas
    finally:
        await nc.close()
    if replicas != 3:
        raise RuntimeError(f"the R3 run's stream has {replicas} replicas")
    return target


async def _peer(stack: AsyncExitStack, report: Report) -> Target | None:
    reason = oidc_peer.skip_reason()
    if reason is None:
        try:
            peer = await stack.enter_async_context(oidc_peer.started())
        except RuntimeError as err:  # e.g. a node too old for oidc-provider 9
            reason = str(err)
        else:
            name = f"oidc-provider {oidc_peer.version()}"
            return Target(name, peer.seed, peer.rotate, {"node": [peer.pid]})
    report.note("oidc", f"node-oidc-provider comparison skipped: {reason}")
    return None


def _cpu_note(target: Target) -> str:
    """Median CPU ms per rotation of each role: where a rotation's time goes, and whether the
    driver (this process) rather than the server was the limit."""
    roles = [*target.pids, "bench"]
    parts = []
    for level in sorted(target.samples):
        medians = []
        for role in roles:
            values = [s.cpu_ms[role] for s in target.samples[level] if role in s.cpu_ms]
            medians.append(f"{Stat.of(values).median:.2f}" if values else "?")
        parts.append(f"C={level} " + "/".join(medians))
    return f"{target.name} CPU ms per rotation ({'/'.join(roles)}): " + ", ".join(parts)


async def run(
    report: Report, reps: int, seconds: float, data_dir: Path, *, r3: bool = True, oidc: bool = True
) -> None:
    """The ledger's R1 sweep always; ``r3``: the 16->64 verdict and the R3 run (section "sweep");
    ``oidc``: node-oidc-provider side by side (section "oidc"), skipped with a note if absent."""
    data_dir.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        server = stack.enter_context(nats_server())
        assert server.process is not None
        r1_settings = Settings(nats_url=server.url, data_dir=data_dir / "r1")
        r1 = await _ledger(stack, r1_settings, [server.process.pid])
        r1x2 = await _two_workers(stack, data_dir)
        r3_target = await _r3(stack, data_dir) if r3 else None
        peer_target = await _peer(stack, report) if oidc else None

        plan: list[tuple[Target, int]] = []
        for level in LEVELS:
            plan += [(r1, level), (r1x2, level)]
            if peer_target is not None:
                plan.append((peer_target, level))
        if r3_target is not None:
            plan.append((r3_target, max(LEVELS)))
        targets = list(dict.fromkeys(t for t, _ in plan))
        for target in targets:  # warm-up: connections, caches, the JIT
            await measure(target, 16, min(0.5, seconds / 2))
        for rep in range(reps):
            for target, level in plan if rep % 2 == 0 else reversed(plan):
                target.samples.setdefault(level, []).append(await measure(target, level, seconds))

    _report(report, r1, r1x2, r3_target, peer_target)


def paired(a: Target, level_a: int, b: Target, level_b: int) -> Stat:
    """a/b throughput of each repetition (runs seconds apart, under the same neighbours' load),
    then the median and spread of those ratios: steadier than a ratio of medians."""
    pairs = zip(a.samples[level_a], b.samples[level_b], strict=True)
    return Stat.of([x.ops_s / y.ops_s if y.ops_s else float("inf") for x, y in pairs])


def _report(report: Report, r1: Target, r1x2: Target, r3: Target | None, peer: Target | None) -> None:
    top = max(LEVELS)
    for target in (r1, r1x2):
        for level in LEVELS:
            name = f"{target.name.replace('ledger ', 'ledger rotate ')}, {level} in flight"
            report.add(Row("sweep", name, "ops/s", target.stat(level)))
            report.add(Row("sweep", f"{name} p50", "ms", target.stat(level, "p50_ms")))
    if r3 is not None:
        no_fall = paired(r1, top, r1, 16)
        name = f"R1 {top} / 16 in flight: throughput does not fall"
        met = no_fall.median >= NO_FALL
        report.add(Row("sweep", name, "x", no_fall, target=f">= {NO_FALL:.2f}x", met=met))
        report.add(Row("sweep", f"ledger rotate R3 (3 nodes), {top} in flight", "ops/s", r3.stat(top)))
        p50 = r3.stat(top, "p50_ms")
        report.add(Row("sweep", f"ledger rotate R3 (3 nodes), {top} in flight p50", "ms", p50))
        report.add(Row("sweep", f"R3 / R1, {top} in flight", "x", paired(r3, top, r1, top)))
    if peer is not None:
        for level in LEVELS:
            report.add(Row("oidc", f"{peer.name} refresh, {level} in flight", "ops/s", peer.stat(level)))
            p50 = peer.stat(level, "p50_ms")
            report.add(Row("oidc", f"{peer.name} refresh, {level} in flight p50", "ms", p50))
            for ours in (r1, r1x2):
                ratio = paired(ours, level, peer, level)
                goal, met = f">= {PEER_TARGET:.1f}x", ratio.median >= PEER_TARGET
                name = f"{ours.name} / peer, {level} in flight"
                report.add(Row("oidc", name, "x", ratio, target=goal, met=met))
    for served in (r1, r1x2, r3, peer):
        if served is not None:
            report.note("sweep", _cpu_note(served))
