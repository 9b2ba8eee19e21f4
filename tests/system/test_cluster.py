"""Failover: an R3 stream on a 3-node cluster loses its leader under load; one node is killed -9.

The load is families rotating one token after another. Each worker keeps the last
token pair the ledger acknowledged and retries the same token on ``unavailable``
(safe: the same presented token yields the same successor). At the end the stream
must hold every acknowledged rotation exactly once, one successor per generation,
and no answer other than success or ``unavailable`` may ever have been given.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import TokenPair
from ledger.domain.errors import LedgerError, Unavailable
from ledger.domain.events import SessionStarted, TokenRotated
from ledger.streaming.cluster import Cluster, ensure_stream_ready, stream_leader, wait_jetstream
from ledger.streaming.connection import connect
from ledger.streaming.credentials import role_url
from ledger.streaming.embedded import NatsServer
from ledger.streaming.store import EventStore
from tests.support.deploy import conf_cluster, set_passwords
from tests.support.processes import wait_ready

WORKERS = 6


@dataclass
class Load:
    """What the workers observed: acknowledged pairs, unavailable answers, wrong answers."""

    acked: dict[str, list[TokenPair]] = field(default_factory=dict)
    answers: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, outcome)
    wrong: list[str] = field(default_factory=list)

    def gaps_after(self, moment: float) -> float:
        """Longest time without any successful answer, from ``moment`` on."""
        ok = sorted(t for t, outcome in self.answers if outcome == "ok" and t >= moment)
        if not ok:
            return float("inf")
        return max([ok[0] - moment] + [b - a for a, b in itertools.pairwise(ok)])

    def count(self, outcome: str) -> int:
        return sum(1 for _, o in self.answers if o == outcome)


async def worker(client: LedgerClient, load: Load, stop: asyncio.Event, sub: str) -> None:
    pair = None
    while pair is None and not stop.is_set():
        pair = await _answer(load, client.start_session(sub))
    if pair is None:
        return
    load.acked[pair.sid] = [pair]
    while not stop.is_set():
        nxt = await _answer(load, client.rotate(pair.refresh_token))
        if nxt is not None:
            if nxt.generation != pair.generation + 1:
                load.wrong.append(f"{pair.sid}: generation {pair.generation} -> {nxt.generation}")
            pair = nxt
            load.acked[pair.sid].append(pair)
        await asyncio.sleep(0.01)


async def _answer(load: Load, call: Any) -> TokenPair | None:
    try:
        pair: TokenPair = await call
    except Unavailable:
        load.answers.append((time.monotonic(), "unavailable"))
        await asyncio.sleep(0.1)
        return None
    except LedgerError as err:
        load.wrong.append(f"{type(err).__name__}: {err}")
        load.answers.append((time.monotonic(), "wrong"))
        return None
    load.answers.append((time.monotonic(), "ok"))
    return pair


async def run_load(client: LedgerClient, load: Load, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(worker(client, load, stop, f"user-{i}")) for i in range(WORKERS)]


async def check_log(settings: Settings, load: Load) -> dict[str, int]:
    """Every acknowledged (sid, generation) is in the stream once; one successor per generation."""
    nc = await connect(settings.nats_url, "test-audit")
    try:
        store = EventStore(nc, settings)
        ids: Counter[str] = Counter()
        per_gen: Counter[tuple[str, int]] = Counter()
        async for rec in store.read(from_seq=1):
            ids[rec.event.event_id] += 1
            if isinstance(rec.event, SessionStarted | TokenRotated):
                per_gen[(rec.event.sid, rec.event.generation)] += 1
    finally:
        await nc.drain()
    assert max(ids.values()) == 1, "an event was stored twice"
    assert max(per_gen.values()) == 1, "a generation has two successors"
    acked = {(sid, p.generation) for sid, pairs in load.acked.items() for p in pairs}
    missing = acked - set(per_gen)
    assert not missing, f"acknowledged but not in the stream: {sorted(missing)[:5]}"
    return {"events": sum(ids.values()), "acked": len(acked)}


async def finish(client: LedgerClient, load: Load) -> None:
    """Each family's last acknowledged token is still the current one: it rotates once more."""
    for pairs in load.acked.values():
        last = pairs[-1]
        for _ in range(50):
            try:
                assert (await client.rotate(last.refresh_token)).generation == last.generation + 1
                break
            except Unavailable:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("the ledger did not come back")


# --- three nodes, R3 -------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path / "cluster", size=3)
    try:
        yield nodes.start()
    finally:
        nodes.stop()


@pytest.mark.slow
async def test_r3_survives_leader_sigkill(cluster: Cluster, tmp_path: Path, services: Any) -> None:
    settings = Settings(
        nats_url=cluster.url,
        replicas=3,
        data_dir=tmp_path / "data",
        duplicate_window=timedelta(seconds=60),
        request_timeout=2.0,
    )
    await ensure_stream_ready(settings)
    await services.start(settings)
    client = await LedgerClient.connect(cluster.url, timeout=3.0)
    load, stop = Load(), asyncio.Event()
    tasks = await run_load(client, load, stop)
    try:
        await asyncio.sleep(2.0)
        leader = await stream_leader(cluster.url, settings.stream)
        assert leader is not None
        killed_at = time.monotonic()
        cluster.kill(leader)
        await asyncio.sleep(12.0)  # election + leader-only reads resuming; loaded CI needs headroom
        outage = load.gaps_after(killed_at)
        new_leader = await stream_leader(cluster.url, settings.stream)
        cluster.restart(leader)
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    try:
        assert not load.wrong, load.wrong[:5]
        assert new_leader not in (None, leader)
        await finish(client, load)
        figures = await check_log(settings, load)
        await wait_caught_up(settings, leader)
    finally:
        await client.close()
    print(
        f"\nR3 leader kill: {figures['acked']} acked, {figures['events']} events, "
        f"{load.count('unavailable')} unavailable answers, 0 wrong, longest gap {outage:.2f}s, "
        f"leader {leader} -> {new_leader}"
    )
    assert outage < 15.0


async def wait_caught_up(settings: Settings, name: str, timeout: float = 20.0) -> None:
    """The restarted node is a current replica again, with no lag."""
    nc = await connect(settings.nats_url, "test-probe")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            info = await nc.jetstream().stream_info(settings.stream)
            peers = {r.name: r for r in (info.cluster.replicas or [])} if info.cluster else {}
            peer = peers.get(name)
            if info.cluster and (info.cluster.leader == name or (peer and peer.current and not peer.lag)):
                return
            await asyncio.sleep(0.25)
    finally:
        await nc.close()
    raise AssertionError(f"{name} did not catch up in {timeout}s")


@pytest.mark.slow
async def test_production_cluster_config_with_auth_survives_a_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, services: Any
) -> None:
    """nats-cluster.conf as shipped (routes authenticated, users from nats.conf): an app
    connected to one node only keeps working through discovered nodes when that node dies."""
    pw = set_passwords(monkeypatch)
    nodes = conf_cluster(tmp_path / "prod", monkeypatch)
    try:
        for node in nodes:
            node.start()
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in nodes)
        ledger_url = f"nats://ledger:{pw['ledger']}@{hosts}"
        await wait_jetstream(ledger_url, 30)
        settings = Settings(nats_url=ledger_url, replicas=3, data_dir=tmp_path / "data", request_timeout=2.0)
        await ensure_stream_ready(settings)
        await services.start(settings)
        app = await LedgerClient.connect(f"nats://app:{pw['app']}@127.0.0.1:{nodes[0].port}", timeout=3)
        try:
            pair = await app.start_session("dora")
            nodes[0].kill()
            rotated = await _retry(lambda: app.rotate(pair.refresh_token), seconds=30)
            assert rotated.generation == 1
            connected = app.nc.connected_url
            assert connected is not None and connected.port != nodes[0].port
        finally:
            await app.close()
        nc = await connect(ledger_url, "test-probe")
        try:
            info = await nc.jetstream().stream_info(settings.stream)
            assert info.config.num_replicas == 3
        finally:
            await nc.close()
    finally:
        await services.stop_all()  # before the servers: a service never waits on a dead cluster
        for node in nodes:
            node.stop()


async def _retry(call: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


# --- one node, kill -9, same store -----------------------------------------------------------


@pytest.mark.slow
async def test_single_node_kill9_loses_no_acknowledged_event(
    nats_server: NatsServer, settings_for: Any, services: Any
) -> None:
    settings = settings_for(request_timeout=2.0)
    await services.start(settings)
    client = await LedgerClient.connect(settings.nats_url, timeout=2.0)
    load, stop = Load(), asyncio.Event()
    tasks = await run_load(client, load, stop)
    try:
        await asyncio.sleep(2.0)
        killed_at = time.monotonic()
        nats_server.kill()
        await asyncio.sleep(1.0)
        token = next(iter(load.acked.values()))[-1].refresh_token
        with pytest.raises(Unavailable):  # a command while NATS is down: a clear "unavailable"
            await client.rotate(token)
        nats_server.start()  # same port, same store
        await asyncio.sleep(4.0)
        outage = load.gaps_after(killed_at)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    try:
        assert not load.wrong, load.wrong[:5]
        figures = await check_log(settings, load)
        await finish(client, load)
    finally:
        await client.close()
    print(
        f"\nkill -9 single node: {figures['acked']} acked, {figures['events']} events, "
        f"{load.count('unavailable')} unavailable answers, longest gap {outage:.2f}s (1 s of it down)"
    )
    assert outage < 10.0


async def test_timed_out_rotation_is_safe_to_retry(
    nats_server: NatsServer, settings_for: Any, services: Any
) -> None:
    """The answer is lost (client gives up first); the retry gets the very same successor."""
    settings = settings_for()
    await services.start(settings)
    client = await LedgerClient.connect(settings.nats_url)
    impatient = await LedgerClient.connect(settings.nats_url, timeout=0.001)
    try:
        pair = await client.start_session("carol")
        with pytest.raises(Unavailable):
            await impatient.rotate(pair.refresh_token)
        first = await client.rotate(pair.refresh_token)
        again = await client.rotate(pair.refresh_token)
        assert first.generation == again.generation == 1
        assert first.refresh_token == again.refresh_token
        load = Load(acked={pair.sid: [pair, first]})
        assert (await check_log(settings, load))["events"] == 3  # key, started, one rotation
    finally:
        await impatient.close()
        await client.close()


def test_up_cluster_3_runs_the_ledger_on_r3(tmp_path: Path) -> None:
    """``session-ledger up --cluster 3``: three loopback servers, R3 stream, commands answered."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "session_ledger.cli",
            "up",
            "--cluster",
            "3",
            "--only",
            "ledger-service",
            "--data-dir",
            str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = wait_ready(proc)  # banner, log lines
        assert lines[0].startswith("starting 3 nats-servers"), lines
        url = lines[0].rsplit(" on ", 1)[1].strip()
        asyncio.run(_rotate_on_r3(url, tmp_path / "state"))  # as up's own users
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 130  # Ctrl-C (SIGINT): stopped cleanly, exit code as the README says


async def _rotate_on_r3(url: str, data_dir: Path) -> None:
    client = await LedgerClient.connect(role_url(url, data_dir, "app"))
    ledger = await connect(role_url(url, data_dir, "ledger"), "test-r3-info")
    try:
        pair = await client.start_session("frank")
        assert (await client.rotate(pair.refresh_token)).generation == 1
        info = await ledger.jetstream().stream_info("LEDGER")
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
    finally:
        await ledger.close()
        await client.close()
