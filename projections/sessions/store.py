"""The sessions read model in a NATS KV bucket (any process can read or watch it).

Exactly-once: every record carries the stream sequence last applied to its key, and
a write is a compare-and-set on the key's KV revision, so a redelivered event is a
no-op and two writers can never interleave on one key. The checkpoint key is a
resume hint and the lag gauge, written after the batch's records.

Which bucket is live is a pointer in ``<stream>_PROJECTIONS`` (key ``sessions``):
a rebuild fills a fresh bucket from sequence 1, then moves the pointer.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping

import nats.js.errors as jserr
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from ledger.config import Settings
from ledger.contracts.subjects import pointer_bucket as contract_pointer_bucket
from ledger.contracts.subjects import sessions_bucket
from ledger.domain.events import RecordedEvent, SessionStarted, TokenRotated
from ledger.domain.ids import NAME_RE
from ledger.streaming.streams import kv_config
from projections.sessions.fold import (
    CHECKPOINT_KEY,
    Record,
    RevokedTokenRecord,
    SessionRecord,
    UserCutRecord,
    changes,
    decode,
    decode_checkpoint,
    encode,
    encode_checkpoint,
    is_cut_key,
    revoked_token_key,
    session_key,
    touched,
    user_cut_key,
    user_prefix,
)

CACHE_SIZE = 100_000
PROJECTION = "sessions"
CAS_ATTEMPTS = 5
PARALLEL_WRITES = 128


def pointer_bucket(settings: Settings) -> str:
    return contract_pointer_bucket(settings.stream)


def bucket_name(settings: Settings, number: int) -> str:
    return sessions_bucket(settings.stream, number)


def bucket_number(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


class SessionStore:
    """One bucket. Meant for a single writer; its cache is only trusted by that writer."""

    def __init__(self, kv: KeyValue, bucket: str, js: JetStreamContext) -> None:
        self.kv = kv
        self.bucket = bucket
        self.js = js
        self._cache: OrderedDict[str, tuple[Record | None, int]] = OrderedDict()

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> SessionStore:
        try:
            kv = await js.key_value(bucket)
        except jserr.BucketNotFoundError:  # without nats.conf's users; there the ledger made it
            kv = await js.create_key_value(kv_config(bucket, replicas))
        return cls(kv, bucket, js)

    async def empty(self) -> None:
        """Drop every key (a stream purge: the bucket, its config and its name stay)."""
        await self.js.purge_stream(f"KV_{self.bucket}")
        self._cache.clear()

    async def get(self, key: str) -> Record | None:
        return (await self._load(key))[0]

    async def session(self, sid: str) -> SessionRecord | None:
        record = await self.get(session_key(sid))
        return record if isinstance(record, SessionRecord) else None

    async def user_cut_record(self, sub: str) -> UserCutRecord | None:
        record = await self.get(user_cut_key(sub))
        return record if isinstance(record, UserCutRecord) else None

    async def user_cut(self, sub: str, sid: str | None = None) -> int | None:
        """The user's cut; with ``sid``, the cut for that session (none if a sign-out kept it)."""
        record = await self.user_cut_record(sub)
        if record is None:
            return None
        return record.seq if sid is None else record.cut_for(sid)

    async def token_revoked(self, jti: str) -> bool:
        if not NAME_RE.fullmatch(jti):
            return False  # never one of ours: no key to look up
        return isinstance(await self.get(revoked_token_key(jti)), RevokedTokenRecord)

    async def user_sessions(self, sub: str) -> list[SessionRecord]:
        sids = [key.rsplit(".", 1)[1] for key in await self._keys(f"{user_prefix(sub)}.s.*")]
        found: list[SessionRecord | None] = []
        for start in range(0, len(sids), PARALLEL_WRITES):  # bounded fan-out
            found += await asyncio.gather(
                *(self.session(sid) for sid in sids[start : start + PARALLEL_WRITES])
            )
        return sorted((s for s in found if s is not None), key=lambda s: s.start_seq)

    async def apply_batch(self, recs: list[RecordedEvent]) -> int:
        """Apply events in order, writing each touched key once, all keys in parallel.

        A crash half-way leaves some keys at the batch's end and others before it; the
        redelivered batch then skips the former (their seq is higher) and fills in the rest.
        """
        keys = sorted({key for rec in recs for key in touched(rec.event)})
        base = await self._load_all(keys)
        records = {key: record for key, (record, _) in base.items() if record is not None}
        starts = {rec.event.sid: rec.event for rec in recs if isinstance(rec.event, SessionStarted)}
        cuts = sorted(set(self._cut_keys(recs, records, starts)) - base.keys())
        base.update(await self._load_all(cuts))  # rotations read their user's cut
        records.update({key: record for key in cuts if (record := base[key][0]) is not None})
        dirty: set[str] = set()
        for rec in recs:
            changed = changes(records, rec)
            records.update(changed)
            dirty.update(changed)
        # Cuts last: a redelivered rotation must never meet a cut from later in its own batch
        # (a crash between the two leaves the sessions written, so their rotations are skipped).
        for cuts_now in (False, True):
            part = sorted(k for k in dirty if is_cut_key(k) == cuts_now)
            await self._write_all([(key, records[key], base[key][1]) for key in part])
        return len(dirty)

    async def _load_all(self, keys: list[str]) -> dict[str, tuple[Record | None, int]]:
        return dict(zip(keys, await asyncio.gather(*(self._load(key) for key in keys)), strict=True))

    @staticmethod
    def _cut_keys(
        recs: list[RecordedEvent], records: dict[str, Record], starts: dict[str, SessionStarted]
    ) -> list[str]:
        out = []
        for rec in recs:
            if isinstance(rec.event, TokenRotated):
                known = records.get(session_key(rec.event.sid))
                sub = known.started.sub if isinstance(known, SessionRecord) else None
                start = starts.get(rec.event.sid)
                sub = sub or (start.sub if start is not None else None)
                if sub is not None:
                    out.append(user_cut_key(sub))
        return out

    async def _write_all(self, writes: list[tuple[str, Record, int]]) -> None:
        for start in range(0, len(writes), PARALLEL_WRITES):
            chunk = writes[start : start + PARALLEL_WRITES]
            results = await asyncio.gather(*(self._write(*w) for w in chunk), return_exceptions=True)
            failed = [(w[0], r) for w, r in zip(chunk, results, strict=True) if isinstance(r, BaseException)]
            for key, _ in failed:
                self._cache.pop(key, None)  # re-read on the redelivery
            if failed:
                raise failed[0][1]

    async def _write(self, key: str, record: Record, revision: int) -> None:
        data = encode(record)
        if revision == 0:
            new_revision = await self.kv.create(key, data)
        else:
            new_revision = await self.kv.update(key, data, last=revision)
        self._remember(key, record, new_revision)

    async def _load(self, key: str) -> tuple[Record | None, int]:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        try:
            entry = await self.kv.get(key)
        except (jserr.KeyNotFoundError, jserr.KeyDeletedError):
            self._remember(key, None, 0)
            return None, 0
        record = decode(entry.value) if entry.value else None
        self._remember(key, record, entry.revision or 0)
        return record, entry.revision or 0

    def _remember(self, key: str, record: Record | None, revision: int) -> None:
        self._cache[key] = (record, revision)
        self._cache.move_to_end(key)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    async def checkpoint(self) -> int:
        try:
            entry = await self.kv.get(CHECKPOINT_KEY)
        except (jserr.KeyNotFoundError, jserr.KeyDeletedError):
            return 0
        return decode_checkpoint(entry.value) if entry.value else 0

    async def save_checkpoint(self, seq: int) -> None:
        """Move the checkpoint forward only (a stale writer can never move it back)."""
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self.kv.get(CHECKPOINT_KEY)
                current, revision = decode_checkpoint(entry.value or b'{"seq":0}'), entry.revision or 0
            except (jserr.KeyNotFoundError, jserr.KeyDeletedError):
                current, revision = 0, 0
            if current >= seq:
                return
            try:
                if revision == 0:
                    await self.kv.create(CHECKPOINT_KEY, encode_checkpoint(seq))
                else:
                    await self.kv.update(CHECKPOINT_KEY, encode_checkpoint(seq), last=revision)
                return
            except jserr.KeyWrongLastSequenceError:
                continue

    async def put_many(self, data: Mapping[str, bytes]) -> None:
        """Unconditional bulk writes: only for a fresh bucket that a rebuild owns alone."""
        items = list(data.items())
        for start in range(0, len(items), PARALLEL_WRITES):
            chunk = items[start : start + PARALLEL_WRITES]
            await asyncio.gather(*(self.kv.put(key, value) for key, value in chunk))

    async def dump(self) -> dict[str, bytes]:
        """Every key and its bytes (tests compare a rebuild with the live bucket this way)."""
        return await self._current(">")

    async def _keys(self, pattern: str) -> list[str]:
        return list(await self._current(pattern, meta_only=True))

    async def _current(
        self, pattern: str, *, meta_only: bool = False, timeout: float = 10.0
    ) -> dict[str, bytes]:
        """The latest value of every live key matching ``pattern``.

        Not ended by nats-py's "no more" marker: it is sent before the first entry
        when the consumer info (num_pending 0) overtakes the pushed entries, and a
        bucket of 1600 keys then dumps as {} (2 in 100 dumps). Instead the keys that
        exist now are listed from the stream first, and the watch runs until each
        of them has come in (later writes may come too; they are newer, never older).
        """
        prefix = f"$KV.{self.bucket}."
        info = await self.js.stream_info(f"KV_{self.bucket}", subjects_filter=prefix + pattern)
        waiting = {subject[len(prefix) :] for subject in info.state.subjects or {}}
        out: dict[str, bytes] = {}
        if not waiting:
            return out
        watcher = await self.kv.watch(pattern, meta_only=meta_only)
        try:
            while waiting:
                entry = await watcher.updates(timeout)  # type: ignore[no-untyped-call]
                if entry is None:
                    continue  # the marker: meaningless here (see above)
                waiting.discard(entry.key)
                if entry.operation in (KV_DEL, KV_PURGE):
                    out.pop(entry.key, None)
                else:
                    out[entry.key] = entry.value or b""
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return out


class Pointer:
    """Which sessions bucket is live: a compare-and-set key in the projections bucket."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings) -> Pointer:
        bucket = pointer_bucket(settings)
        try:
            kv = await js.key_value(bucket)
        except jserr.BucketNotFoundError:  # without nats.conf's users; there the ledger made it
            kv = await js.create_key_value(kv_config(bucket, settings.replicas))
        return cls(kv)

    async def read(self) -> tuple[str | None, int]:
        try:
            entry = await self.kv.get(PROJECTION)
        except (jserr.KeyNotFoundError, jserr.KeyDeletedError):
            return None, 0
        return (entry.value.decode() if entry.value else None), entry.revision or 0

    async def move(self, bucket: str, revision: int) -> bool:
        """Point at ``bucket`` iff nobody moved the pointer since ``revision``."""
        try:
            if revision == 0:
                await self.kv.create(PROJECTION, bucket.encode())
            else:
                await self.kv.update(PROJECTION, bucket.encode(), last=revision)
        except jserr.KeyWrongLastSequenceError:
            return False
        return True


async def live_bucket(js: JetStreamContext, settings: Settings) -> str:
    """The live bucket's name, creating the pointer (bucket 1) on first use."""
    pointer = await Pointer.open(js, settings)
    for _ in range(CAS_ATTEMPTS):
        name, revision = await pointer.read()
        if name is not None:
            return name
        if await pointer.move(bucket_name(settings, 1), revision):
            return bucket_name(settings, 1)
    raise RuntimeError("could not initialise the sessions pointer")


async def sessions_checkpoint(nc: NATS, settings: Settings) -> int | None:
    """The live bucket's checkpoint (None before the projection first ran)."""
    js = nc.jetstream(timeout=settings.request_timeout)
    bucket, _ = await (await Pointer.open(js, settings)).read()
    if bucket is None:
        return None
    return await (await SessionStore.open(js, bucket)).checkpoint()
