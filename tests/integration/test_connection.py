"""The server holds a connection's subscriptions before the process says it is ready.

nats-py's ``flush()`` writes its PING ahead of SUB commands still queued for its flusher task,
so one PONG does not prove the server has them (``ledger.streaming.connection.flush_to_server``).
Read from the server's own protocol trace, which does not depend on timing.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from nats.aio.msg import Msg

from ledger.streaming.connection import connect, flush_to_server
from ledger.streaming.embedded import NatsServer, free_port


def _protocol(log: Path, client: str) -> list[str]:
    """What ``client`` sent, in the order the server read it (``<<- [SUB ...]``, ``<<- [PING]``)."""
    return [
        line.split("<<- [", 1)[1]
        for line in log.read_text().splitlines()
        if f':python3:{client}"' in line and "<<- [" in line
    ]


async def test_a_ping_follows_the_subscriptions_before_flush_to_server_returns(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "js", port=free_port(), extra_config="trace: true\n").start()
    log = tmp_path / f"{server.name}.log"
    try:
        responder, asker = await connect(server.url, "responder"), await connect(server.url, "asker")

        async def answer(msg: Msg) -> None:
            await msg.respond(b"here")

        await responder.subscribe("probe.q", queue="probes", cb=answer)
        await flush_to_server(responder)
        reply = await asker.request("probe.q", b"?", timeout=5)  # another connection, at once
        assert reply.data == b"here"
        deadline = time.monotonic() + 5  # the trace line is written as the server reads it
        while time.monotonic() < deadline:
            sent = _protocol(log, "responder")
            sub = next((i for i, line in enumerate(sent) if line.startswith("SUB probe.q probes")), None)
            if sub is not None and any(line.startswith("PING") for line in sent[sub + 1 :]):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"no PING after the SUB: the PONG did not answer for it ({sent})")
        await responder.drain()
        await asker.drain()
    finally:
        server.stop()
