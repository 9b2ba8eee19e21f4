"""The event store's two read paths (direct get for R1, leader get for R>1) answer alike."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.store import JOIN_LIMIT, EventStore


@pytest.fixture
def leader_store(store: EventStore, settings: Settings) -> EventStore:
    return EventStore(store.nc, settings.model_copy(update={"replicas": 3}))


async def test_direct_and_leader_reads_agree(
    client: LedgerClient, store: EventStore, leader_store: EventStore
) -> None:
    pair = await client.start_session("alice", scopes=["read"])
    await client.rotate(pair.refresh_token)
    await client.revoke_user("bob")
    subjects = [
        store.subjects.family_filter(pair.sid),
        store.subjects.family_event(pair.sid, "started"),
        store.subjects.user("bob"),
        store.subjects.user("nobody"),
        store.subjects.family_filter("A" * 22),
    ]
    for subject in subjects:
        assert await store.last(subject) == await leader_store.last(subject)
    family = await leader_store.family(pair.sid)
    assert family is not None and family.head.generation == 1 and family.start_seq < family.head_seq
    assert await leader_store.user_cut("bob") == await store.user_cut("bob") is not None


async def test_concurrent_reads_join_into_one_request_and_each_gets_its_own_answer(
    client: LedgerClient, store: EventStore, leader_store: EventStore
) -> None:
    """Rotations in flight read their family and their user's cut, then re-check the cut, in
    one batch direct get per event-loop turn. Every answer must equal a read of its own (here
    the leader path, which never joins): the right family, the right cut, "sign out the
    others" applied to the kept session only, unknown sessions and users absent."""
    pairs = [await client.start_session(f"user{i % 5}") for i in range(JOIN_LIMIT + 16)]
    for pair in pairs[::3]:
        await client.rotate(pair.refresh_token)
    await client.revoke_user("user1")
    kept = next(p for p in pairs if p.sub == "user2")
    await client.sign_out_others(sub="user2", current_sid=kept.sid)
    for pair in pairs:  # the service's store caches each family's user; this one has not read yet
        await store.family(pair.sid)
    requests: list[int] = []
    real = store._multi_last

    async def counted(filters: list[str], **kw: int) -> tuple[list[Any], int | None]:
        requests.append(len(filters))
        return await real(filters, **kw)

    store._multi_last = counted  # type: ignore[method-assign]
    views = await asyncio.gather(*(store.family_and_cut(p.sid) for p in pairs))
    cuts = await asyncio.gather(*(store.user_cut(p.sub, p.sid) for p in pairs), store.user_cut("nobody"))
    # 80 reads, then 81 checks: two requests each (a request joins at most JOIN_LIMIT reads, so
    # it never matches more subjects than nats-server answers: past 1024 it refuses them all)
    assert len(requests) == 4, requests
    last = await store.last_seq()
    for pair, (family, cut, complete_to), user_cut in zip(pairs, views, cuts[:-1], strict=True):
        alone = await leader_store.family(pair.sid)
        assert family == alone and family is not None and family.started.sid == pair.sid
        assert cut == user_cut == await leader_store.user_cut(pair.sub, pair.sid)
        assert complete_to == last
        if pair.sub == "user1" or (pair.sub == "user2" and pair.sid != kept.sid):
            assert cut is not None and cut > family.start_seq
        else:
            assert cut is None or cut < family.start_seq
    assert cuts[-1] is None
