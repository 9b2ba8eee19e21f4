"""Signing-key lifecycle against a real server: rotate ahead, retire now, forged keys ignored,
and the JWKS checked by an independent JOSE library."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from nats.aio.client import Client as NATS

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import BadRequest
from ledger.domain.events import SigningKeyAdded
from ledger.domain.ids import new_event_id
from ledger.domain.keys import added_statement
from ledger.service.keyops import follow, jwks, retire_key, rotate_key
from ledger.service.keys import SigningKey, generate, key_id, sign_statement
from ledger.streaming.store import EventStore
from projections.sessions.runner import run_sessions
from tests.support.edge import (
    broadcaster,
    claims_for,
    kid_of,
    reason_of,
    running,
    sign,
    until_rejected,
    verifier,
)


async def test_a_forged_key_event_changes_nothing_at_the_edge_or_introspection(
    client: LedgerClient, settings: Settings, store: EventStore
) -> None:
    """Even written into the stream (only the ledger user can), an unsigned or self-signed key
    is ignored: its tokens are unknown everywhere."""
    forger = SigningKey("", "ES256", generate("ES256"))
    forger = SigningKey(key_id(forger.public), "ES256", forger.private)
    jwk = forger.public_jwk()
    now = datetime.now(UTC)
    for proof in (None, sign_statement(added_statement(forger.kid, "ES256", jwk, None), forger)):
        event = SigningKeyAdded(event_id=new_event_id(), occurred_at=now, kid=forger.kid, alg="ES256",
                                public_jwk=jwk, proof=proof)  # fmt: skip
        await store.append(store.subjects.key(forger.kid, "added"), event)
    pair = await client.start_session("admin-target")
    minted = sign(forger, claims_for(settings, sub="admin", sid=pair.sid, ssq=1))
    async with running(run_sessions, settings), verifier(settings) as edge:
        assert reason_of(edge, minted) == "unknown_kid"
        assert edge.verify(pair.access_token).sub == "admin-target"
        deadline = time.monotonic() + 10
        while not (await client.introspect(pair.access_token)).active:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert (await client.introspect(minted)).active is False
    async with verifier(settings) as late:  # replaying the stream from the start: the same
        assert reason_of(late, minted) == "unknown_kid"


async def test_rotation_publishes_ahead_and_no_token_is_rejected_for_an_unknown_key(
    client: LedgerClient, settings: Settings, nc: NATS
) -> None:
    old = kid_of((await client.start_session("kim")).access_token)
    tokens: list[str] = []
    async with broadcaster(settings), verifier(settings) as edge:
        rotated = await rotate_key(nc, settings, now=datetime.now(UTC), activate_in=timedelta(seconds=1.5))
        published = jwks((await follow(nc, settings)).book)
        assert {k["kid"] for k in published["keys"]} == {old, rotated.kid}  # the next key is in the JWKS
        async with verifier(settings) as mid:  # an edge started mid-rotation
            deadline = time.monotonic() + 10  # bounded load across the switch
            while time.monotonic() < deadline and len({kid_of(t) for t in tokens}) < 2:
                tokens.append((await client.start_session("kim")).access_token)
                await asyncio.sleep(0.02)
            for token in tokens:
                assert edge.verify(token).sub == "kim" and mid.verify(token).sub == "kim"
        assert {kid_of(t) for t in tokens} == {old, rotated.kid}
        assert kid_of(tokens[0]) == old  # nothing was signed with the new key before its time
        async with verifier(settings) as late:
            assert all(late.verify(t).sub == "kim" for t in tokens)
    verify_with_jose(tokens, jwks((await follow(nc, settings)).book))


def verify_with_jose(tokens: list[str], key_set: dict[str, list[dict[str, str]]]) -> None:
    keys = KeySet.import_key_set(key_set)  # type: ignore[arg-type]
    for token in tokens:
        assert jose_jwt.decode(token, keys, algorithms=["ES256"]).claims["sub"]


async def test_retire_now_stops_every_instance_signing_and_edges_reject_at_once(
    client: LedgerClient, settings: Settings, nc: NATS
) -> None:
    before = await client.start_session("lena")
    old = kid_of(before.access_token)
    async with broadcaster(settings), verifier(settings) as edge:
        assert edge.verify(before.access_token).sub == "lena"
        t0 = time.monotonic()
        retired = await retire_key(nc, settings, old, now=datetime.now(UTC), immediately=True)
        assert retired.reason == "compromise"
        _, reason = await until_rejected(edge, before.access_token, limit=10)
        assert reason == "key_retired"
        elapsed = time.monotonic() - t0
        after = await client.start_session("lena")  # the same service instance, no restart
        assert kid_of(after.access_token) != old
        assert edge.verify(after.access_token).sub == "lena"
        rotated = await client.rotate(before.refresh_token)  # the session lives on, newly signed
        assert kid_of(rotated.access_token) != old
    book = (await follow(nc, settings)).book
    assert old not in {k["kid"] for k in jwks(book)["keys"]}
    assert elapsed < 10


async def test_retiring_a_key_whose_tokens_may_live_needs_now(
    client: LedgerClient, settings: Settings, nc: NATS
) -> None:
    old = kid_of((await client.start_session("max")).access_token)
    with pytest.raises(BadRequest):  # it signs now
        await retire_key(nc, settings, old, now=datetime.now(UTC), immediately=False)
    await rotate_key(nc, settings, now=datetime.now(UTC), activate_in=timedelta(0))
    with pytest.raises(BadRequest):  # superseded a moment ago: its tokens live for access_ttl
        await retire_key(nc, settings, old, now=datetime.now(UTC), immediately=False)
    later = datetime.now(UTC) + settings.access_ttl + timedelta(minutes=2)
    assert (await retire_key(nc, settings, old, now=later, immediately=False)).reason == "rotation"
