"""The analytics projection: every ledger event (and edge receipt) into one DuckDB file.

One process writes the file (DuckDB allows one writer per file). It pulls batches
from a durable JetStream consumer, stages each batch as NDJSON and loads it with one
``INSERT ... SELECT FROM read_json(...)``, and stores the batch's last stream
sequence in ``checkpoints`` in the same transaction (invariant 7): a crash before
COMMIT loses the whole batch and the restart resumes from checkpoint + 1.

Readers never touch the writer's file while it runs: after a commit, at most every
``snapshot_every`` seconds, the writer checkpoints DuckDB and publishes a copy
(``<name>.snapshot.duckdb``, atomic rename) that reports open read-only. Reports are
therefore up to a few seconds stale, and never block or slow down ingestion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ledger.config import Settings
from ledger.errors import Unavailable
from ledger.events import UPCASTERS, upcast
from ledger.natsconn import connect
from projections.analytics_schema import (
    EVENT_FIELDS,
    RECEIPT_FIELDS,
    STAGE_COLUMNS,
    create_schema,
    load_select,
)
from projections.pull import Puller

log = logging.getLogger("projections.analytics")

RECEIPTS_STREAM = "LEDGER_RECEIPTS"
DURABLE = "analytics"
BATCH = 5000
SNAPSHOT_EVERY = 5.0
FETCH_WAIT = 0.5
RECEIPTS_PROBE_EVERY = 5.0

__all__ = [
    "AnalyticsDB",
    "AnalyticsProjection",
    "db_path_for",
    "open_reader",
    "rebuild_subject",
    "run_analytics",
    "snapshot_path",
]


def db_path_for(settings: Settings) -> Path:
    return settings.data_dir / "analytics.duckdb"


def snapshot_path(db: Path) -> Path:
    return db.with_name(db.stem + ".snapshot.duckdb")


def ack_position(reply: str) -> tuple[int, int]:
    """(stream sequence, stored-at in ns) from a JetStream ack subject, v1 or v2 layout."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[7])
    return int(tokens[7]), int(tokens[9])


def stage_line(data: bytes, seq: int, subject: str, ts_ns: int, *, strict: bool = False) -> bytes:
    """One NDJSON line for the loader, the payload kept byte for byte.

    The fast path only checks the payload's shape; if DuckDB then rejects the batch, it
    is staged again with ``strict=True``: every payload parsed, a malformed one stored as
    ``null`` (type ``_malformed``) so the row count still equals the stream's.
    """
    payload = data
    if strict or UPCASTERS or not (data[:1] == b"{" and data[-1:] == b"}" and b"\n" not in data):
        payload = _checked(data)
    quoted = subject.encode() if _PLAIN.fullmatch(subject) else json.dumps(subject)[1:-1].encode()
    return b'{"seq":%d,"subject":"%s","ts_us":%d,"e":%s}' % (seq, quoted, ts_ns // 1000, payload)


_PLAIN = re.compile(r"[!#-\[\]-~]+")  # printable ASCII but quote and backslash: JSON-safe as is


def _checked(data: bytes) -> bytes:
    try:
        obj = json.loads(data)
    except ValueError:
        return b"null"
    if not isinstance(obj, dict):
        return b"null"
    return json.dumps(upcast(obj), separators=(",", ":")).encode()


@dataclass(frozen=True)
class Feed:
    """One source stream and the table it loads."""

    stream: str
    table: str
    fields: tuple[tuple[str, str | None], ...]
    durable: str
    filter_subject: str | None = None


def feeds(settings: Settings, durable: str = DURABLE) -> tuple[Feed, Feed]:
    events = Feed(settings.stream, "events", EVENT_FIELDS, durable, f"{settings.subject_prefix}.ev.>")
    receipts = Feed(RECEIPTS_STREAM, "receipts", RECEIPT_FIELDS, f"{durable}_receipts")
    return events, receipts


_COPY = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"


class AnalyticsDB:
    """The single write connection; every batch is one transaction with its checkpoint."""

    def __init__(self, path: Path, *, grace_window_s: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.grace_window_s = grace_window_s
        self.conn = duckdb.connect(str(path))
        self.stage = path.with_name(path.name + ".stage.ndjson")
        self.before_commit: Callable[[], None] = lambda: None
        create_schema(self.conn, grace_window_s=grace_window_s)

    def checkpoint(self, stream: str) -> int:
        row = self.conn.execute("SELECT last_seq FROM checkpoints WHERE stream = ?", [stream]).fetchone()
        return 0 if row is None else int(row[0])

    def apply(self, feed: Feed, lines: list[bytes], last_seq: int) -> None:
        """Load ``lines`` and move the checkpoint to ``last_seq``, atomically."""
        self.stage.write_bytes(b"\n".join(lines))
        path = str(self.stage).replace("'", "''")
        self.conn.execute("BEGIN TRANSACTION")
        try:
            source = f"read_json('{path}', format='newline_delimited', columns={STAGE_COLUMNS})"
            self.conn.execute(f"INSERT INTO {feed.table} {load_select(feed.fields, source)}")
            self.before_commit()
            self.conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", [feed.stream, last_seq])
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    async def publish_snapshot(self) -> None:
        """Copy a consistent file for readers: CHECKPOINT empties the WAL, nobody writes meanwhile.

        The copy runs in a child process: DuckDB's file lock is a POSIX record lock, and
        closing *any* descriptor of the file in this process would silently release it.
        """
        self.conn.execute("CHECKPOINT")
        target = snapshot_path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        copier = await asyncio.create_subprocess_exec(sys.executable, "-c", _COPY, str(self.path), str(tmp))
        if await copier.wait() != 0:
            raise OSError(f"could not copy {self.path} to {tmp}")
        os.replace(tmp, target)

    def close(self) -> None:
        self.conn.close()
        self.stage.unlink(missing_ok=True)


@dataclass
class Progress:
    """Counts for the progress line on stderr (rebuild) and for the tests."""

    applied: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        return self.applied / max(time.monotonic() - self.started, 1e-9)


class AnalyticsProjection:
    """Pulls both feeds into ``AnalyticsDB`` until ``stop`` (or until caught up, for a rebuild)."""

    def __init__(
        self,
        settings: Settings,
        db: AnalyticsDB,
        *,
        durable: str = DURABLE,
        batch: int = BATCH,
        snapshot_every: float | None = SNAPSHOT_EVERY,
    ) -> None:
        self.settings = settings
        self.db = db
        self.batch = batch
        self.snapshot_every = snapshot_every
        self.events, self.receipts = feeds(settings, durable)
        self.progress = Progress()
        self._subs: dict[str, Puller] = {}
        self._nc: Any = None
        self._last_seq: dict[str, int] = {}
        self._last_snapshot = 0.0
        self._dirty = False
        self._last_probe = 0.0
        self._rebuild_requests: list[Msg] = []

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        nc = self._nc = await connect(self.settings.nats_url, "ledger-analytics")
        try:
            js = nc.jetstream(timeout=self.settings.request_timeout)
            await self._wait_for_stream(js, stop)
            await self._bind(js, self.events)
            await nc.subscribe(rebuild_subject(self.settings), cb=self._rebuild_requests_append)
            if ready is not None:
                ready.set()
            while not stop.is_set():
                if self._rebuild_requests:
                    await self._rebuild_in_place(js)
                try:
                    await self._step(js, follow=True)
                except (nats.errors.Error, TimeoutError, Unavailable) as err:  # NATS away: retry, never die
                    log.warning("analytics: %s; retrying", type(err).__name__)
                    await asyncio.sleep(1.0)
                    await self._rebind(js)
        finally:
            await self._finish(nc)

    async def _wait_for_stream(self, js: Any, stop: asyncio.Event) -> None:
        """Started before the ledger service (``analytics run`` alone): wait for its stream."""
        while not stop.is_set():
            try:
                await js.stream_info(self.settings.stream)
                return
            except NotFoundError:
                log.info("analytics: waiting for stream %s", self.settings.stream)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def _rebuild_requests_append(self, msg: Msg) -> None:
        self._rebuild_requests.append(msg)

    async def _rebuild_in_place(self, js: Any) -> None:
        """``session-ledger analytics rebuild`` while this process holds the file: build a
        fresh file from sequence 1 (ingest pauses meanwhile), swap it in, resume from its
        checkpoint + 1, answer the requester."""
        from projections.analytics_rebuild import build_fresh, swap_in

        requests, self._rebuild_requests = self._rebuild_requests, []
        began = time.monotonic()
        try:
            progress = await build_fresh(self.settings, self.db.path, print_progress)
            path, grace, hook = self.db.path, self.db.grace_window_s, self.db.before_commit
            self.db.close()
            swap_in(path)
            self.db = AnalyticsDB(path, grace_window_s=grace)
            self.db.before_commit = hook
            for feed in (self.events, self.receipts):
                if feed.stream in self._subs:
                    await self._bind(js, feed)
            self._dirty = True
            await self._maybe_snapshot(force=True)
            answer: dict[str, Any] = {
                "ok": True,
                "rows": progress.applied,
                "seconds": time.monotonic() - began,
            }
        except Exception as err:
            log.exception("analytics: rebuild failed")
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        for msg in requests:
            with contextlib.suppress(Exception):
                await msg.respond(json.dumps(answer).encode())

    async def catch_up(self, on_batch: Callable[[Progress], None] | None = None) -> Progress:
        """Apply everything in the streams now, then return (used by rebuild and tests)."""
        nc = self._nc = await connect(self.settings.nats_url, "ledger-analytics-rebuild")
        try:
            js = nc.jetstream(timeout=self.settings.request_timeout)
            await self._bind(js, self.events)
            await self._probe_receipts(js, force=True)
            pending = True
            while pending:
                pending = await self._step(js, follow=False)
                if on_batch is not None:
                    on_batch(self.progress)
        finally:
            await self._finish(nc)
        return self.progress

    async def _finish(self, nc: Any) -> None:
        with contextlib.suppress(Exception):
            await self._maybe_snapshot(force=True)
        for puller in self._subs.values():
            with contextlib.suppress(Exception):
                await puller.stop()
        with contextlib.suppress(Exception):
            await nc.drain()

    async def _step(self, js: Any, *, follow: bool) -> bool:
        """One round over the feeds; True while any feed still had messages."""
        got = await self._pump(self.events, FETCH_WAIT if follow else None)
        await self._probe_receipts(js)
        if self.receipts.stream in self._subs:
            got = await self._pump(self.receipts, None) or got
        await self._maybe_snapshot()
        if not got and not follow:
            return await self._has_pending(js)
        return got

    async def _bind(self, js: Any, feed: Feed) -> None:
        """(Re)create the durable at checkpoint + 1: DuckDB, not the server, owns the position,
        and a fresh consumer redelivers a crashed batch at once instead of after ack_wait."""
        if (old := self._subs.pop(feed.stream, None)) is not None:
            with contextlib.suppress(Exception):
                await old.stop()
        start = self.db.checkpoint(feed.stream) + 1
        self._last_seq[feed.stream] = start - 1
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(feed.stream, feed.durable)
        config = ConsumerConfig(
            durable_name=feed.durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=self.batch * 4,
            filter_subject=feed.filter_subject,
        )
        await js.add_consumer(feed.stream, config)
        self._subs[feed.stream] = await Puller(self._nc, feed.stream, feed.durable).start()

    async def _rebind(self, js: Any) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            for feed in (self.events, self.receipts):
                if feed.stream in self._subs:
                    await self._bind(js, feed)

    async def _probe_receipts(self, js: Any, *, force: bool = False) -> None:
        """Receipts are optional: follow the stream once an edge verifier has created it."""
        now = time.monotonic()
        if self.receipts.stream in self._subs or (
            not force and now - self._last_probe < RECEIPTS_PROBE_EVERY
        ):
            return
        self._last_probe = now
        try:
            await js.stream_info(self.receipts.stream)
        except NotFoundError:
            return
        await self._bind(js, self.receipts)

    async def _pump(self, feed: Feed, wait: float | None) -> bool:
        msgs = await self._subs[feed.stream].fetch(self.batch, wait=wait)
        if not msgs:
            return False
        self._apply(feed, msgs)
        await msgs[-1].ack()  # AckPolicy.ALL: one ack covers the batch
        return True

    def _apply(self, feed: Feed, msgs: list[Msg]) -> None:
        lines, last = self._stage(feed, msgs, strict=False)
        if not lines:
            return
        try:
            self.db.apply(feed, lines, last)
        except (duckdb.InvalidInputException, duckdb.ConversionException):
            log.warning("analytics: malformed payload in batch ending at seq %d; staging it strictly", last)
            self.db.apply(feed, self._stage(feed, msgs, strict=True)[0], last)
        self._last_seq[feed.stream] = last
        self.progress.applied += len(lines)
        self.progress.batches += 1
        self._dirty = True

    def _stage(self, feed: Feed, msgs: list[Msg], *, strict: bool) -> tuple[list[bytes], int]:
        last = self._last_seq[feed.stream]
        lines: list[bytes] = []
        for msg in msgs:
            seq, ts_ns = ack_position(msg.reply)
            if seq > last:  # a redelivery of something already applied is skipped
                lines.append(stage_line(msg.data, seq, msg.subject, ts_ns, strict=strict))
                last = seq
        return lines, last

    async def _has_pending(self, js: Any) -> bool:
        for feed in (self.events, self.receipts):
            if feed.stream not in self._subs:
                continue
            info = await js.consumer_info(feed.stream, feed.durable)
            if info.num_pending or info.num_ack_pending:
                return True
        return False

    async def _maybe_snapshot(self, *, force: bool = False) -> None:
        if self.snapshot_every is None or not self._dirty:
            return
        if not force and time.monotonic() - self._last_snapshot < self.snapshot_every:
            return
        started = time.monotonic()
        await self.db.publish_snapshot()
        self._dirty = False
        # A big file copies slowly: never spend more than ~10% of the time copying.
        self._last_snapshot = time.monotonic() + 9 * (time.monotonic() - started)


async def run_analytics(settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """The ``session-ledger up`` component: follow the streams until ``stop``."""
    db = AnalyticsDB(db_path_for(settings), grace_window_s=settings.grace_window.total_seconds())
    try:
        await AnalyticsProjection(settings, db).run(stop, ready)
    finally:
        db.close()


def rebuild_subject(settings: Settings) -> str:
    """Where a running projection takes rebuild requests (it holds the file, nobody else can)."""
    return f"{settings.subject_prefix}.analytics.rebuild"


def print_progress(p: Progress) -> None:
    if p.batches % 20 == 1:
        print(f"analytics rebuild: {p.applied} rows, {p.rate():,.0f}/s", file=sys.stderr, flush=True)


def open_reader(db_path: Path) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A read-only connection: the live file if no writer holds it, else the latest snapshot."""
    if not db_path.exists():
        raise FileNotFoundError(f"no analytics database at {db_path}: run `session-ledger up` or a rebuild")
    try:
        return duckdb.connect(str(db_path), read_only=True), "live"
    except duckdb.Error as err:  # another process holds the lock, or this one holds it read-write
        if not any(word in str(err).lower() for word in ("lock", "different configuration")):
            raise
    snap = snapshot_path(db_path)
    if not snap.exists():
        raise FileNotFoundError(f"{db_path} is being written and has no snapshot yet; retry in a few seconds")
    return duckdb.connect(str(snap), read_only=True), "snapshot"
