"""Invariant 2 (reuse revokes) and invariant 8 (revoke-all is ordered), on a real server."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from ledger.client import LedgerClient
from ledger.config import ReusePolicy, Settings
from ledger.contracts.commands import RevokeUserRequest, RotateRequest, StartSessionRequest, TokenPair
from ledger.domain.errors import SessionRevokedError, TokenReused
from ledger.domain.events import ReuseDetected, RevokeReason, TokenRotated, UserSessionsRevoked
from ledger.domain.events import SessionRevoked as Revoked
from ledger.service.app import build_service
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from tests.support.helpers import all_events, family_events
from tests.support.services import ServiceRunner

GRACE = timedelta(milliseconds=200)


async def _client_for(services: ServiceRunner, settings: Settings) -> LedgerClient:
    await services.start(settings)
    return await LedgerClient.connect(settings.nats_url)


async def _rotate_past_grace(client: LedgerClient, pair: TokenPair) -> TokenPair:
    newer = await client.rotate(pair.refresh_token)
    await asyncio.sleep(GRACE.total_seconds() + 0.1)
    return newer


async def test_replay_after_grace_revokes_the_family(
    services: ServiceRunner,
    settings_for,
    store: EventStore,  # type: ignore[no-untyped-def]
) -> None:
    client = await _client_for(services, settings_for(grace_window=GRACE))
    async with client:
        pair = await client.start_session("alice")
        other = await client.start_session("alice")
        newest = await _rotate_past_grace(client, pair)
        with pytest.raises(TokenReused):
            await client.rotate(pair.refresh_token)  # the thief (or the victim) replays gen 0
        with pytest.raises(SessionRevokedError):
            await client.rotate(newest.refresh_token)  # the legitimate newest token is dead too
        with pytest.raises(SessionRevokedError):
            await client.rotate(pair.refresh_token)  # replaying again: no second alarm
        assert (await client.rotate(other.refresh_token)).generation == 1  # family policy: others live
    kinds = [type(e.event) for e in await family_events(store, pair.sid)]
    assert kinds.count(ReuseDetected) == 1 and kinds[-1] is Revoked
    revoked = (await family_events(store, pair.sid))[-1].event
    assert isinstance(revoked, Revoked) and revoked.reason is RevokeReason.REUSE


async def test_two_generations_old_is_reuse_even_inside_the_window(
    services: ServiceRunner,
    settings_for,  # type: ignore[no-untyped-def]
) -> None:
    client = await _client_for(services, settings_for(grace_window=timedelta(seconds=30)))
    async with client:
        pair = await client.start_session("alice")
        g1 = await client.rotate(pair.refresh_token)
        await client.rotate(g1.refresh_token)
        with pytest.raises(TokenReused):
            await client.rotate(pair.refresh_token)


async def test_user_policy_revokes_every_session_of_the_user(
    services: ServiceRunner,
    settings_for,
    store: EventStore,  # type: ignore[no-untyped-def]
) -> None:
    client = await _client_for(services, settings_for(grace_window=GRACE, reuse_policy=ReusePolicy.USER))
    async with client:
        stolen = await client.start_session("alice", client_id="laptop")
        phone = await client.start_session("alice", client_id="phone")
        bob = await client.start_session("bob")
        await _rotate_past_grace(client, stolen)
        with pytest.raises(TokenReused):
            await client.rotate(stolen.refresh_token)
        with pytest.raises(SessionRevokedError):
            await client.rotate(phone.refresh_token)
        assert (await client.rotate(bob.refresh_token)).generation == 1
        fresh = await client.start_session("alice")  # a new login after the incident works
        assert (await client.rotate(fresh.refresh_token)).generation == 1
    user_events = [e.event for e in await all_events(store) if isinstance(e.event, UserSessionsRevoked)]
    assert [(u.sub, u.reason) for u in user_events] == [("alice", RevokeReason.REUSE)]


async def test_revoke_user_racing_with_rotations_is_ordered(client: LedgerClient, store: EventStore) -> None:
    """After revoke_user is acknowledged, no session that existed before it rotates again.

    A rotation that read the state before the revoke but committed after it must be
    answered with ``session_revoked``: every successful answer committed before the cut.
    """
    pairs = await asyncio.gather(*(client.start_session("carol") for _ in range(16)))
    latest = {p.sid: p.refresh_token for p in pairs}
    answered: set[tuple[str, int]] = set()
    cut: list[int] = []

    async def churn(sid: str) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                pair = await client.rotate(latest[sid])
            except SessionRevokedError:
                return
            answered.add((sid, pair.generation))
            latest[sid] = pair.refresh_token

    async def revoke_midway() -> None:
        await asyncio.sleep(0.2)
        rev = await client.revoke_user("carol", RevokeReason.PASSWORD_CHANGE)
        assert rev.seq is not None
        cut.append(rev.seq)

    await asyncio.gather(revoke_midway(), *(churn(sid) for sid in latest))
    for token in latest.values():
        with pytest.raises(SessionRevokedError):
            await client.rotate(token)  # every token ever issued to those sessions is dead
    committed = {
        (e.event.sid, e.event.generation): e.seq
        for e in await all_events(store)
        if isinstance(e.event, TokenRotated)
    }
    assert answered and all(committed[key] < cut[0] for key in answered)
    raced = sum(1 for seq in committed.values() if seq > cut[0])
    print(f"rotations committed after the cut (answered session_revoked): {raced}")
    new = await client.start_session("carol")
    assert (await client.rotate(new.refresh_token)).generation == 1


async def test_a_revoke_all_between_the_batch_view_and_the_append_still_wins(settings: Settings) -> None:
    """Invariant 8 on the one-read path: the rotation read a complete view (batch direct get,
    ``Nats-UpTo-Sequence``); a revoke-all lands after the view, before the append. The append
    is then not right after the view, so the cut is re-read and the rotation refused; with
    nothing in between the check is skipped, and the rotation is answered."""
    nc = await connect(settings.nats_url, "test-window")
    try:
        service = await build_service(settings, nc)
        pair = await service.start_session(StartSessionRequest(sub="dana"))
        first = await service.rotate(RotateRequest(refresh_token=pair.refresh_token))  # caches the user
        service.heads.drop(first.sid)  # no hint: the one-read path (test_heads.py has the other)
        store = service.store
        view_seen: list[int | None] = []
        real = store.family_and_cut

        async def view_then_revoke(sid: str) -> tuple[object, int | None, int | None]:
            family, cut, complete_to = await real(sid)
            view_seen.append(complete_to)
            await service.revoke_user(RevokeUserRequest(sub="dana", reason=RevokeReason.PASSWORD_CHANGE))
            return family, cut, complete_to

        store.family_and_cut = view_then_revoke  # type: ignore[method-assign,assignment]
        with pytest.raises(SessionRevokedError):
            await service.rotate(RotateRequest(refresh_token=first.refresh_token))
        assert view_seen and view_seen[0] is not None  # the one-read path was taken
        store.family_and_cut = real  # type: ignore[method-assign]
        fresh = await service.start_session(StartSessionRequest(sub="dana"))
        await service.rotate(RotateRequest(refresh_token=fresh.refresh_token))
        family, cut, complete_to = await store.family_and_cut(fresh.sid)
        assert family is not None and complete_to == await store.last_seq()  # complete up to the end
        assert cut == (await store.user_cut("dana")) and family.head_seq == complete_to
    finally:
        await nc.drain()
