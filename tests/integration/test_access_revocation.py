"""RFC 7009 for access tokens: one ``jti`` revoked alone, broadcast to every edge, seen by
introspection; its session and its other tokens go on. A forged token appends nothing."""

from __future__ import annotations

import asyncio
import time

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import TokenInvalid
from ledger.streaming.store import EventStore
from projections.sessions.runner import run_sessions
from tests.support.edge import (
    broadcaster,
    claims_for,
    reason_of,
    running,
    service_key,
    sign,
    until_rejected,
    verifier,
)


async def introspected_active(client: LedgerClient, token: str, want: bool, limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while (await client.introspect(token)).active is not want:
        assert time.monotonic() < deadline, f"introspection never said active={want}"
        await asyncio.sleep(0.05)


async def test_one_access_token_is_revoked_alone_everywhere(
    settings: Settings, client: LedgerClient, store: EventStore
) -> None:
    async with broadcaster(settings), running(run_sessions, settings), verifier(settings) as edge:
        pair = await client.start_session("alice", client_id="web", scopes=["read"])
        newer = await client.rotate(pair.refresh_token)
        await introspected_active(client, pair.access_token, True)
        revocation = await client.revoke_access(pair.access_token)
        assert revocation.seq is not None and revocation.sid == pair.sid and not revocation.already_revoked
        _, reason = await until_rejected(edge, pair.access_token, limit=10)
        assert reason == "token_revoked"
        assert reason_of(edge, newer.access_token) is None  # the session's other token lives on
        await introspected_active(client, pair.access_token, False)
        assert (await client.introspect(newer.access_token)).active
        assert (await client.rotate(newer.refresh_token)).generation == 2  # the session goes on
        again = await client.revoke_access(pair.access_token)
        assert again.already_revoked and again.seq is None


async def test_a_forged_access_token_revokes_nothing(
    settings: Settings, client: LedgerClient, store: EventStore
) -> None:
    pair = await client.start_session("bob")
    before = await store.last_seq()
    key = service_key(settings)
    forged = [
        pair.access_token[:-4] + ("AAAA" if not pair.access_token.endswith("AAAA") else "BBBB"),
        sign(key, claims_for(settings, iss="someone-else")),
        "not-a-jwt",
        "x" * 9000,
    ]
    for token in forged:
        try:
            await client.revoke_access(token)
        except TokenInvalid:
            continue
        except Exception as err:  # BadRequest for the oversized one
            assert err.__class__.__name__ == "BadRequest", err
            continue
        raise AssertionError("a forged token was accepted for revocation")
    assert await store.last_seq() == before
