"""The event store's two read paths (direct get for R1, leader get for R>1) answer alike."""

from __future__ import annotations

import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.store import EventStore


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
