"""Invariant 1 (one successor) and the grace window, against a real nats-server.

Two service instances share the queue group: the race is real, across processes'
worth of connections, decided only by JetStream's compare-and-set.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import RotateRequest, TokenPair
from ledger.domain.errors import LedgerError
from ledger.domain.events import ReuseDetected, TokenRotated
from ledger.service.app import CommandServer, build_service
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from tests.support.helpers import all_events, family_events


@pytest.fixture
async def two_instances(settings: Settings) -> AsyncIterator[collections.Counter[str]]:
    """Two ledger service instances in one queue group; counts the rotations each handled."""
    served: collections.Counter[str] = collections.Counter()
    brokers, conns = [], []
    for name in ("a", "b"):
        nc = await connect(settings.nats_url, f"instance-{name}")
        service = await build_service(settings, nc)
        original = service.rotate

        async def counted(req: RotateRequest, _name: str = name, _orig=original) -> TokenPair:  # type: ignore[no-untyped-def]
            served[_name] += 1
            return await _orig(req)

        service.rotate = counted  # type: ignore[method-assign]
        brokers.append(await CommandServer(nc, service, settings).start())
        conns.append(nc)
    yield served
    for broker in brokers:
        await broker.stop()
    for nc in conns:
        await nc.drain()


async def test_50_concurrent_rotations_over_two_instances_advance_one_generation(
    two_instances: collections.Counter[str], settings: Settings
) -> None:
    async with await LedgerClient.connect(settings.nats_url) as client:
        pair = await client.start_session("alice", client_id="web")
        results = await asyncio.gather(
            *(client.rotate(pair.refresh_token) for _ in range(50)), return_exceptions=True
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    successors = {r.refresh_token for r in results if isinstance(r, TokenPair)}
    assert len(successors) == 1  # every answer carries the same successor
    assert {r.generation for r in results if isinstance(r, TokenPair)} == {1}
    assert two_instances["a"] > 0 and two_instances["b"] > 0, two_instances  # both raced

    nc = await connect(settings.nats_url, "check")
    try:
        store = EventStore(nc, settings)
        rotations = [e for e in await family_events(store, pair.sid) if isinstance(e.event, TokenRotated)]
        assert [e.event.generation for e in rotations] == [1]
        assert not [e for e in await all_events(store) if isinstance(e.event, ReuseDetected)]
        family = await store.family(pair.sid)
        assert family is not None and family.head.generation == 1
    finally:
        await nc.drain()


async def test_concurrent_rotations_of_many_families(client: LedgerClient, store: EventStore) -> None:
    pairs = await asyncio.gather(*(client.start_session(f"user{i}") for i in range(20)))
    rounds = 5
    current = {p.sid: p.refresh_token for p in pairs}
    for _ in range(rounds):
        # each family presented twice at once (two tabs): still one successor per generation
        results = await asyncio.gather(*(client.rotate(tok) for tok in current.values() for _ in range(2)))
        by_sid: dict[str, set[str]] = collections.defaultdict(set)
        for r in results:
            by_sid[r.sid].add(r.refresh_token)
        assert all(len(v) == 1 for v in by_sid.values())
        current = {sid: next(iter(v)) for sid, v in by_sid.items()}
    for p in pairs:
        gens = [
            e.event.generation for e in await family_events(store, p.sid) if isinstance(e.event, TokenRotated)
        ]
        assert gens == list(range(1, rounds + 1))


async def test_retry_inside_grace_returns_the_same_successor_and_no_event(
    client: LedgerClient, store: EventStore
) -> None:
    pair = await client.start_session("alice")
    first = await client.rotate(pair.refresh_token)
    before = await store.last_seq()
    again = await client.rotate(pair.refresh_token)  # lost response / second tab
    assert again.refresh_token == first.refresh_token and again.generation == 1
    assert again.access_token != first.access_token  # a fresh access token, same family state
    assert await store.last_seq() == before  # nothing appended, no alarm
    nxt = await client.rotate(first.refresh_token)  # the family carries on normally
    assert nxt.generation == 2


@pytest.fixture
def short_grace(settings_for) -> Settings:  # type: ignore[no-untyped-def]
    return settings_for(grace_window=timedelta(milliseconds=300))  # type: ignore[no-any-return]


async def test_token_pair_fields(client: LedgerClient) -> None:
    pair = await client.start_session("alice", client_id="web", scopes=["read", "write"])
    assert pair.refresh_token.startswith(f"rt1.{pair.sid}.0.")
    assert pair.access_expires_at <= pair.session_expires_at
    assert pair.refresh_expires_at <= pair.session_expires_at
    with pytest.raises(LedgerError):
        await client.rotate(pair.refresh_token[:-1])
