"""Rotations from a hint (``ledger.service.heads``), on a real server with two instances.

A hint is what one instance last wrote or read of a family. These tests make hints stale in
every way another writer can (another instance rotates, revokes the session, revokes the
user) and show that the answer is always the one a fresh read gives: a hint saves a read,
never changes a verdict (invariants 1, 2, 8).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from ledger.config import Settings
from ledger.contracts.commands import (
    RevokeSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    StartSessionRequest,
    TokenPair,
)
from ledger.domain.errors import SessionRevokedError, TokenInvalid, TokenReused
from ledger.domain.events import TokenRotated
from ledger.eventstore.base import BaseEventStore
from ledger.service.app import build_service
from ledger.service.handlers import LedgerService
from ledger.streaming.connection import connect
from tests.support.helpers import family_events


@dataclass
class Reads:
    """How many family reads (``family_and_cut``) an instance made."""

    count: int = 0


def _count_reads(store: BaseEventStore) -> Reads:
    reads, real = Reads(), store.family_and_cut

    async def counted(sid: str):  # type: ignore[no-untyped-def]
        reads.count += 1
        return await real(sid)

    store.family_and_cut = counted  # type: ignore[method-assign]
    return reads


@pytest.fixture
async def pair_of_instances(settings_for) -> AsyncIterator[tuple[LedgerService, LedgerService]]:  # type: ignore[no-untyped-def]
    settings: Settings = settings_for(grace_window=timedelta(milliseconds=300))
    conns = [await connect(settings.nats_url, f"hint-{name}") for name in ("a", "b")]
    try:
        a, b = [await build_service(settings, nc) for nc in conns]
        yield a, b
    finally:
        for nc in conns:
            await nc.drain()


async def _rotate(service: LedgerService, pair: TokenPair) -> TokenPair:
    return await service.rotate(RotateRequest(refresh_token=pair.refresh_token))


async def test_a_rotation_from_a_hint_reads_no_family(pair_of_instances) -> None:  # type: ignore[no-untyped-def]
    a, _ = pair_of_instances
    reads = _count_reads(a.store)
    pair = await a.start_session(StartSessionRequest(sub="hana"))
    for _ in range(5):
        pair = await _rotate(a, pair)
    assert pair.generation == 5 and reads.count == 0
    assert len(a.heads) == 1


async def test_the_cut_is_read_after_a_rotation_only_if_something_came_between(pair_of_instances) -> None:  # type: ignore[no-untyped-def]
    """A hint knows the cut up to its own last append: the next append landing right after it
    had nothing come between, so no read; an event of another session in between: a read."""
    a, _ = pair_of_instances
    cuts = Reads()
    real = a.store.user_cut

    async def counted(sub: str, sid: str | None = None) -> int | None:
        cuts.count += 1
        return await real(sub, sid)

    a.store.user_cut = counted  # type: ignore[method-assign]
    pair = await a.start_session(StartSessionRequest(sub="pia"))
    for _ in range(3):
        pair = await _rotate(a, pair)
    assert cuts.count == 0
    other = await a.start_session(StartSessionRequest(sub="quinn"))  # lands in between
    pair = await _rotate(a, pair)
    assert cuts.count == 1
    await _rotate(a, other)  # quinn's hint knows its cut up to its start; pia's append came since
    assert cuts.count == 2


async def test_with_hints_off_every_rotation_reads(settings_for) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = settings_for(rotation_hints=0)
    nc = await connect(settings.nats_url, "hints-off")
    try:
        service = await build_service(settings, nc)
        reads = _count_reads(service.store)
        pair = await service.start_session(StartSessionRequest(sub="tao"))
        for _ in range(3):
            pair = await _rotate(service, pair)
        assert pair.generation == 3 and reads.count == 3 and len(service.heads) == 0
    finally:
        await nc.drain()


async def test_a_family_rotated_by_another_instance_is_read_again(pair_of_instances, store) -> None:  # type: ignore[no-untyped-def]
    """a's hint says generation 1; b rotates to 2; the newest token at a is not 'unknown'."""
    a, b = pair_of_instances
    reads = _count_reads(a.store)
    pair = await _rotate(a, await a.start_session(StartSessionRequest(sub="ines")))
    newer = await _rotate(b, pair)
    newest = await _rotate(a, newer)  # a's hint (generation 1) is stale: decided on a read
    assert newest.generation == 3 and reads.count == 1
    assert newest.refresh_token == (await _rotate(a, newer)).refresh_token  # a retry: same successor
    rotated = [r.event for r in await family_events(store, pair.sid) if isinstance(r.event, TokenRotated)]
    assert [e.generation for e in rotated] == [1, 2, 3]


async def test_a_stale_hint_never_rotates_a_revoked_session(pair_of_instances) -> None:  # type: ignore[no-untyped-def]
    a, b = pair_of_instances
    pair = await _rotate(a, await a.start_session(StartSessionRequest(sub="jon")))
    await b.revoke_session(RevokeSessionRequest(sid=pair.sid))  # a's hint still says alive
    with pytest.raises(SessionRevokedError):
        await _rotate(a, pair)
    with pytest.raises(SessionRevokedError):
        await _rotate(a, pair)


async def test_a_revoke_all_after_the_hint_wins(pair_of_instances, store) -> None:  # type: ignore[no-untyped-def]
    """Invariant 8 from a hint: the hint's cut is old, so the cut is re-read after the append.
    (Hearing the revoke-all would drop the hints first; here a's hearing is off, to test the
    check behind it, as if the notice were still on its way.)"""
    a, b = pair_of_instances
    a.heads.forget_user = lambda sub: None  # type: ignore[method-assign]
    pairs = [await _rotate(a, await a.start_session(StartSessionRequest(sub="kim"))) for _ in range(3)]
    await b.revoke_user(RevokeUserRequest(sub="kim"))
    for pair in pairs:
        with pytest.raises(SessionRevokedError):
            await _rotate(a, pair)
    fresh = await a.start_session(StartSessionRequest(sub="kim"))  # after the cut: alive
    assert (await _rotate(a, fresh)).generation == 1


async def test_a_peers_revoke_all_is_heard_and_nothing_is_appended_after_it(pair_of_instances, store) -> None:  # type: ignore[no-untyped-def]
    """Each instance hears every revoke-all and forgets that user's hints, so a stale hint does
    not append a rotation that the post-append check would then refuse."""
    a, b = pair_of_instances
    pairs = [await _rotate(a, await a.start_session(StartSessionRequest(sub="ned"))) for _ in range(2)]
    other = await _rotate(a, await a.start_session(StartSessionRequest(sub="ola")))
    assert len(a.heads) == 3
    cut = (await b.revoke_user(RevokeUserRequest(sub="ned"))).seq
    deadline = asyncio.get_running_loop().time() + 30
    while len(a.heads) > 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert len(a.heads) == 1  # ola's hint is kept
    for pair in pairs:
        with pytest.raises(SessionRevokedError):
            await _rotate(a, pair)
    assert cut is not None and await store.last_seq() == cut  # nothing appended after the cut
    assert (await _rotate(a, other)).generation == 2


async def test_a_forged_token_of_a_hinted_family_appends_nothing(pair_of_instances, store) -> None:  # type: ignore[no-untyped-def]
    """Invariant 3 through the hint path: a token with the family's sid and generation but
    another secret is refused as on a fresh read, and no event is appended."""
    a, _ = pair_of_instances
    pair = await _rotate(a, await a.start_session(StartSessionRequest(sub="uma")))
    assert a.heads.get(pair.sid) is not None
    before = await store.last_seq()
    prefix, sid, generation, secret = pair.refresh_token.split(".")
    forged = ".".join((prefix, sid, generation, ("A" if secret[0] != "A" else "B") + secret[1:]))
    with pytest.raises(TokenInvalid):
        await a.rotate(RotateRequest(refresh_token=forged))
    with pytest.raises(TokenInvalid):
        await a.rotate(RotateRequest(refresh_token=forged, client_id="someone-else"))
    assert await store.last_seq() == before
    assert (await _rotate(a, pair)).generation == 2  # the genuine token still rotates


async def test_reuse_is_judged_on_a_fresh_read_not_on_a_hint(pair_of_instances) -> None:  # type: ignore[no-untyped-def]
    a, b = pair_of_instances
    first = await a.start_session(StartSessionRequest(sub="lee"))
    second = await _rotate(a, first)
    third = await _rotate(b, second)
    await asyncio.sleep(0.4)  # past the grace window
    with pytest.raises(TokenReused):
        await _rotate(a, second)  # superseded by b: a's hint (gen 1 current) would have rotated it
    with pytest.raises(SessionRevokedError):
        await _rotate(b, third)


async def test_concurrent_tabs_from_one_hint_get_one_successor(pair_of_instances, store) -> None:  # type: ignore[no-untyped-def]
    a, b = pair_of_instances
    pair = await a.start_session(StartSessionRequest(sub="mia"))
    answers = await asyncio.gather(*(_rotate(s, pair) for s in (a, b) * 10))
    assert {x.refresh_token for x in answers} == {answers[0].refresh_token}
    rotated = [r.event for r in await family_events(store, pair.sid) if isinstance(r.event, TokenRotated)]
    assert len(rotated) == 1
