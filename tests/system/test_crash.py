"""Invariant 9: killing the service mid-load loses no acknowledged rotation and applies none twice."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import time
from pathlib import Path

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import Unavailable
from ledger.domain.events import TokenRotated
from ledger.domain.refresh import TokenKeys, parse
from ledger.service.keys import load_or_create_master
from ledger.streaming.embedded import NatsServer
from ledger.streaming.store import EventStore
from session_ledger.cli.up import service_command
from tests.support.helpers import all_events


def _start_service(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    cmd = service_command(settings)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


async def _wait_ready(client: LedgerClient, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            await client.start_session("probe")
            return
        except Unavailable:
            await asyncio.sleep(0.1)
    raise AssertionError("service did not come up")


async def test_kill_service_mid_load(settings: Settings, store: EventStore, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    proc = _start_service(settings, log)
    acked: dict[tuple[str, int], str] = {}
    try:
        async with await LedgerClient.connect(settings.nats_url, timeout=1.0) as client:
            await _wait_ready(client, time.monotonic() + 20)
            pairs = await asyncio.gather(*(client.start_session(f"u{i}") for i in range(16)))
            stop_at = time.monotonic() + 4.0

            async def churn(token: str) -> None:
                while time.monotonic() < stop_at:
                    try:
                        pair = await client.rotate(token)  # retried as-is after a timeout
                    except Unavailable:
                        await asyncio.sleep(0.05)
                        continue
                    acked[(pair.sid, pair.generation)] = pair.refresh_token
                    token = pair.refresh_token

            async def kill_and_restart() -> None:
                nonlocal proc
                await asyncio.sleep(1.2)
                os.kill(proc.pid, signal.SIGKILL)  # no chance to finish in-flight work
                proc.wait(5)
                await asyncio.sleep(0.5)
                proc = _start_service(settings, log)

            await asyncio.gather(kill_and_restart(), *(churn(p.refresh_token) for p in pairs))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

    keys = TokenKeys(load_or_create_master(settings.keys_path))
    rotated = [r.event for r in await all_events(store) if isinstance(r.event, TokenRotated)]
    per_family = collections.defaultdict(list)
    for event in rotated:
        per_family[event.sid].append(event)
    for events in per_family.values():  # applied once: generations 1..n, no repeat, no gap
        assert [e.generation for e in events] == list(range(1, len(events) + 1))
    by_key = {(e.sid, e.generation): e for e in rotated}
    for (sid, generation), token in acked.items():  # every acknowledged rotation is in the stream
        assert keys.hash(parse(token)) == by_key[(sid, generation)].token_hash
    assert len(acked) > 50, f"too little load to mean anything: {len(acked)}"
    print(f"\n{len(acked)} acknowledged rotations, {len(rotated)} in the stream, all present once")


async def test_service_stops_cleanly_while_nats_is_down(settings: Settings, nats_server: NatsServer) -> None:
    from tests.support.services import ServiceRunner

    runner = ServiceRunner()
    stop, task = await runner.start(settings)
    nats_server.stop()
    stop.set()
    await asyncio.wait_for(task, 20)  # returns, no exception: shutdown does not need the server
    assert task.exception() is None


async def test_service_started_before_nats_waits_for_it(settings: Settings, tmp_path: Path) -> None:
    """Start-up order does not matter: the service connects once the server is there."""
    from ledger.streaming.embedded import NatsServer, free_port
    from tests.support.services import ServiceRunner

    late = NatsServer(store_dir=tmp_path / "late", port=free_port())
    runner = ServiceRunner()

    async def start_server_later() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(late.start)

    starter = asyncio.create_task(start_server_later())
    try:
        await asyncio.wait_for(runner.start(settings.model_copy(update={"nats_url": late.url})), 30)
        async with await LedgerClient.connect(late.url) as client:
            assert (await client.start_session("late")).generation == 0
    finally:
        await starter
        await runner.stop_all()
        late.stop()
