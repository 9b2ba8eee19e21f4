"""An in-memory event store with JetStream's append semantics, for fast service tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from ledger.contracts.subjects import Subjects
from ledger.domain.errors import ConcurrencyConflict
from ledger.domain.events import Event, RecordedEvent, decode_event, encode_event
from ledger.eventstore.base import BaseEventStore, subject_matches


class MemoryEventStore(BaseEventStore):
    """One process's list of events. Events round-trip through their stored bytes, so a
    test sees exactly what a JetStream reader would decode. No duplicate window expiry."""

    def __init__(self, subjects: Subjects | None = None) -> None:
        super().__init__(subjects or Subjects())
        self.records: list[RecordedEvent] = []
        self._by_event_id: dict[str, int] = {}
        self._grew = asyncio.Condition()
        self.appends = 0  # accepted appends, duplicates excluded (tests count round trips)

    async def ensure_stream(self) -> None:
        return None

    async def append(self, subject: str, event: Event, *, expect: tuple[str, int] | None = None) -> int:
        if expect is not None:
            last = await self.last(expect[0])
            if (0 if last is None else last.seq) != expect[1]:
                raise ConcurrencyConflict(expect[0], expect[1])  # checked before dedup, as JetStream does
        if (seq := self._by_event_id.get(event.event_id)) is not None:
            return seq
        seq = len(self.records) + 1
        stored = decode_event(encode_event(event))
        self.records.append(RecordedEvent(stored, seq, subject, datetime.now(UTC)))
        self._by_event_id[event.event_id] = seq
        self.appends += 1
        async with self._grew:
            self._grew.notify_all()
        return seq

    async def last(self, subject: str) -> RecordedEvent | None:
        for rec in reversed(self.records):
            if subject_matches(subject, rec.subject):
                return rec
        return None

    async def last_seq(self) -> int:
        return len(self.records)

    async def read(self, *, from_seq: int = 1, follow: bool = False) -> AsyncIterator[RecordedEvent]:
        seq = max(from_seq, 1)
        while True:
            while seq <= len(self.records):
                yield self.records[seq - 1]
                seq += 1
            if not follow:
                return
            async with self._grew:
                await self._grew.wait_for(self._longer_than(seq - 1))

    def _longer_than(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.records) > n
