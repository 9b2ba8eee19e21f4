"""NATS goes away: the verifier keeps verifying with what it knows, its staleness grows,
and past the limit it fails closed (or open, by explicit opt-in). NATS comes back (the
same nats-server, same store and port): the verifier reconnects by itself and applies
the revocations issued while it was away."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from ledger.client import LedgerClient
from ledger.streaming.embedded import NatsServer
from tests.support.edge import broadcaster, reason_of, report, retry, until_rejected, verifier

LIMIT = timedelta(seconds=1.5)


async def test_stale_fails_closed_then_catches_up(
    client: LedgerClient, settings: Any, nats_server: NatsServer, capsys: Any
) -> None:
    away = await client.start_session("judy")
    kept = await client.start_session("karl")
    async with (
        broadcaster(settings),
        verifier(settings, max_staleness=LIMIT, heartbeat=0.2, reconnect_wait=6.0) as closed,
        verifier(settings, max_staleness=LIMIT, heartbeat=0.2, fail_open=True) as opened,
    ):
        assert closed.staleness() < 0.5 and closed.verify(kept.access_token)
        nats_server.stop()
        stopped = time.monotonic()
        await asyncio.sleep(0.5)
        assert 0.2 < closed.staleness() < LIMIT.total_seconds()
        assert closed.verify(kept.access_token).sub == "karl"  # still verifying with what it knows
        await asyncio.sleep(LIMIT.total_seconds())
        assert closed.staleness() > LIMIT.total_seconds()
        assert reason_of(closed, kept.access_token) == "stale"
        assert closed.health()["serving"] is False
        assert opened.verify(kept.access_token).sub == "karl"  # fail-open keeps accepting
        assert opened.health()["serving"] is True

        nats_server.start()
        revoked = await retry(lambda: client.revoke_session(away.sid))
        assert revoked.seq is not None
        assert closed.nc is not None and not closed.nc.is_connected, "revoked while the verifier was away"
        assert reason_of(closed, away.access_token) == "stale"
        reconnected = await until_connected(closed.nc, limit=20.0)
        back, reason = await until_rejected(closed, away.access_token, limit=10.0, ignore=("stale",))
        assert reason == "session_revoked"
        report(
            capsys,
            f"verifier reconnected {reconnected - stopped:.1f} s after NATS stopped; the revocation "
            f"missed meanwhile applied {1000 * (back - reconnected):.1f} ms after the reconnect",
        )
        assert closed.verify(kept.access_token).sub == "karl"
        assert closed.staleness() < 1.0 and closed.health()["live"]
        _, reason = await until_rejected(opened, away.access_token, limit=10.0)
        assert reason == "session_revoked"


async def until_connected(nc: Any, limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if nc.is_connected:
            return time.monotonic()
        await asyncio.sleep(0.001)
    raise AssertionError("verifier did not reconnect")
