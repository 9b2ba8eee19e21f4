"""Small helpers shared by integration tests."""

from __future__ import annotations

from ledger.domain.events import RecordedEvent
from ledger.streaming.store import EventStore


async def all_events(store: EventStore) -> list[RecordedEvent]:
    return [rec async for rec in store.read(from_seq=1)]


async def family_events(store: EventStore, sid: str) -> list[RecordedEvent]:
    return [rec for rec in await all_events(store) if getattr(rec.event, "sid", None) == sid]
