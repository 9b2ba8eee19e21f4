"""Rebuild the sessions model from sequence 1 into a fresh bucket, then move the pointer.

The service keeps running: the live runner keeps the old bucket current until the
pointer moves, then continues on the new one from its checkpoint + 1. The fold runs
in memory (``projections.sessions.fold.fold``) and only each key's final bytes are
written, in parallel; records are flushed every ``FLUSH_EVERY`` events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from ledger.config import Settings
from ledger.streaming.store import EventStore
from projections.sessions.fold import CHECKPOINT_KEY, Record, changes, encode, encode_checkpoint
from projections.sessions.store import Pointer, SessionStore, bucket_name, bucket_number

FLUSH_EVERY = 20_000
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RebuildResult:
    bucket: str
    previous: str | None
    events: int
    keys: int
    last_seq: int
    seconds: float


async def rebuild_sessions(nc: NATS, settings: Settings, progress: Progress | None = None) -> RebuildResult:
    js = nc.jetstream(timeout=settings.request_timeout)
    began = time.monotonic()
    pointer = await Pointer.open(js, settings)
    previous, revision = await pointer.read()
    name = bucket_name(settings, await _next_number(js, settings, previous))
    store = await SessionStore.open(js, name, replicas=settings.replicas)
    await store.empty()  # an abandoned rebuild, or the bucket before the previous rebuild
    events, records, end = await _fold_into(store, EventStore(nc, settings), progress)
    if not await pointer.move(name, revision):
        await store.empty()
        raise RuntimeError("another rebuild moved the sessions pointer first; nothing changed")
    return RebuildResult(name, previous, events, len(records), end, time.monotonic() - began)


async def _fold_into(
    store: SessionStore, events: EventStore, progress: Progress | None
) -> tuple[int, dict[str, Record], int]:
    end = await events.last_seq()
    records: dict[str, Record] = {}
    dirty: set[str] = set()
    count = 0
    async for rec in events.read(from_seq=1):
        changed = changes(records, rec)
        records.update(changed)
        dirty.update(changed)
        count += 1
        if count % FLUSH_EVERY == 0:
            await _flush(store, records, dirty)
        if progress is not None:
            progress(rec.seq, end)
    await _flush(store, records, dirty)
    if end:
        await store.put_many({CHECKPOINT_KEY: encode_checkpoint(end)})
    return count, records, end


async def _flush(store: SessionStore, records: dict[str, Record], dirty: set[str]) -> None:
    await store.put_many({key: encode(records[key]) for key in sorted(dirty)})
    dirty.clear()


async def _next_number(js: JetStreamContext, settings: Settings, live: str | None) -> int:
    """The other one of the two sessions buckets (1 and 2); the caller empties it first.

    Two fixed names, not an ever-growing number: the ledger creates exactly these buckets and
    nats.conf lets the projector use them, so it never creates a stream of its choosing.
    """
    return 2 if live is not None and bucket_number(live) == 1 else 1
