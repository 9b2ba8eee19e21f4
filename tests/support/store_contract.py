"""One contract for every event-store adapter (in-memory and JetStream).

Subclass ``StoreContract`` and provide an async ``store`` fixture yielding a fresh,
empty store; pytest collects the inherited tests for each adapter.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from ledger.domain.errors import ConcurrencyConflict
from ledger.domain.events import SessionStarted, TokenRotated, UserSessionsRevoked
from ledger.domain.ids import new_event_id
from ledger.eventstore.base import BaseEventStore

SID = "S" * 22
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def started(sid: str = SID, sub: str = "alice") -> SessionStarted:
    return SessionStarted(event_id=new_event_id(), occurred_at=NOW, sid=sid, generation=0,
                          token_hash="0" * 64, sub=sub, idle_ttl_s=60, absolute_ttl_s=600)  # fmt: skip


def rotated(generation: int, sid: str = SID) -> TokenRotated:
    return TokenRotated(event_id=new_event_id(), occurred_at=NOW, sid=sid, generation=generation,
                        token_hash=f"{generation:064x}")  # fmt: skip


def revoke_all(sub: str) -> UserSessionsRevoked:
    return UserSessionsRevoked(event_id=new_event_id(), occurred_at=NOW, sub=sub, reason="admin",
                               not_before=NOW, requested_at=NOW)  # fmt: skip


class StoreContract:
    async def test_compare_and_set_refuses_a_stale_sequence(self, store: BaseEventStore) -> None:
        s = store.subjects
        family = s.family_filter(SID)
        first = await store.append(s.family_event(SID, "started"), started(), expect=(family, 0))
        second = await store.append(s.family_event(SID, "rotated"), rotated(1), expect=(family, first))
        assert first < second
        with pytest.raises(ConcurrencyConflict):
            await store.append(
                s.family_event(SID, "rotated"), rotated(2), expect=(s.family_filter(SID), first)
            )
        with pytest.raises(ConcurrencyConflict):  # a new family must not exist yet
            await store.append(s.family_event(SID, "started"), started(), expect=(s.family_filter(SID), 0))
        assert await store.last_seq() == second

    async def test_only_one_of_concurrent_writers_wins(self, store: BaseEventStore) -> None:
        s = store.subjects
        seq = await store.append(s.family_event(SID, "started"), started(), expect=(s.family_filter(SID), 0))
        outcomes = await asyncio.gather(
            *(store.append(s.family_event(SID, "rotated"), rotated(1), expect=(s.family_filter(SID), seq))
              for _ in range(10)),
            return_exceptions=True,
        )  # fmt: skip
        assert sum(isinstance(o, int) for o in outcomes) == 1
        assert all(isinstance(o, int | ConcurrencyConflict) for o in outcomes)

    async def test_the_same_event_id_is_appended_once(self, store: BaseEventStore) -> None:
        event = revoke_all("bob")
        seq = await store.append(store.subjects.user("bob"), event)
        assert await store.append(store.subjects.user("bob"), event) == seq
        assert await store.last_seq() == seq

    async def test_last_by_subject_and_by_wildcard(self, store: BaseEventStore) -> None:
        s = store.subjects
        other = "O" * 22
        a = await store.append(s.family_event(SID, "started"), started())
        b = await store.append(s.family_event(other, "started"), started(other, "carol"))
        c = await store.append(s.family_event(SID, "rotated"), rotated(1))
        assert (await store.last(s.family_filter(SID))).seq == c  # type: ignore[union-attr]
        assert (await store.last(s.family_event(SID, "started"))).seq == a  # type: ignore[union-attr]
        assert (await store.last(s.family_filter(other))).seq == b  # type: ignore[union-attr]
        assert (await store.last(s.events)).seq == c  # type: ignore[union-attr]
        assert await store.last(s.family_filter("N" * 22)) is None

    async def test_family_is_facts_plus_head_and_user_cut_is_the_last_revoke_all(
        self, store: BaseEventStore
    ) -> None:
        s = store.subjects
        start = await store.append(s.family_event(SID, "started"), started())
        head = await store.append(s.family_event(SID, "rotated"), rotated(1))
        family = await store.family(SID)
        assert family is not None and (family.start_seq, family.head_seq) == (start, head)
        assert family.started.sub == "alice" and family.head.generation == 1
        assert await store.user_cut("alice") is None
        cut = await store.append(s.user("alice"), revoke_all("alice"))
        assert await store.user_cut("alice") == cut
        assert await store.family("N" * 22) is None

    async def test_read_returns_events_in_order_from_a_sequence(self, store: BaseEventStore) -> None:
        s = store.subjects
        seqs = [await store.append(s.family_event(SID, "started"), started())]
        seqs += [await store.append(s.family_event(SID, "rotated"), rotated(g)) for g in (1, 2, 3)]
        read = [rec async for rec in store.read(from_seq=seqs[1])]
        assert [rec.seq for rec in read] == seqs[1:]
        assert [rec.event.generation for rec in read] == [1, 2, 3]  # type: ignore[union-attr]
        assert [rec async for rec in store.read(from_seq=seqs[-1] + 1)] == []
