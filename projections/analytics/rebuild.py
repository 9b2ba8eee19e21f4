"""Rebuild the analytics file from sequence 1 (invariant 6), offline or inside the runner.

A rebuild never edits the live file: it loads every event into ``<file>.rebuild`` with
its own durable consumer, then swaps it in with one rename. When no process holds the
file, the CLI does that itself; when ``session-ledger up`` holds it, the CLI asks the
running projection over NATS (``<prefix>.analytics.rebuild``), which pauses ingest,
builds, swaps and resumes from the new file's checkpoint + 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import nats.errors
from nats.js.errors import NotFoundError

from ledger.config import Settings
from ledger.domain.errors import Unavailable
from ledger.streaming.connection import connect
from projections.analytics.projection import (
    BATCH,
    DURABLE,
    AnalyticsDB,
    AnalyticsProjection,
    Progress,
    db_path_for,
    open_writer,
    print_progress,
    rebuild_subject,
    snapshot_path,
)

log = logging.getLogger("projections.analytics.rebuild")
REBUILD_TIMEOUT = 3600.0


def staging_path(target: Path) -> Path:
    return target.with_name(target.name + ".rebuild")


async def build_fresh(
    settings: Settings, target: Path, on_batch: Callable[[Progress], None] | None
) -> Progress:
    """Load every event so far into ``<target>.rebuild``; the live file is not touched."""
    tmp = staging_path(target)
    for stale in (tmp, tmp.with_name(tmp.name + ".wal")):
        stale.unlink(missing_ok=True)
    db = AnalyticsDB(tmp, grace_window_s=settings.grace_window.total_seconds())
    projection = AnalyticsProjection(settings, db, durable=f"{DURABLE}_rebuild", snapshot_every=None)
    try:
        progress = await projection.catch_up(on_batch)
        db.conn.execute("CHECKPOINT")
    finally:
        db.close()
    await _drop_consumers(settings, projection)
    return progress


def swap_in(target: Path) -> None:
    """Replace ``target`` by the rebuilt file (the caller holds no connection to it)."""
    target.with_name(target.name + ".wal").unlink(missing_ok=True)
    os.replace(staging_path(target), target)


async def _drop_consumers(settings: Settings, projection: AnalyticsProjection) -> None:
    nc = await connect(settings.nats_url, "ledger-analytics-rebuild")
    try:
        js = nc.jetstream(timeout=settings.request_timeout)
        for feed in (projection.events, projection.receipts):
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(feed.stream, feed.durable)
    finally:
        await nc.drain()


async def rebuild(settings: Settings, db_path: Path, *, quiet: bool = False) -> Progress:
    """Offline rebuild; ``duckdb.IOException`` if another process holds the file."""
    if db_path.exists():
        duckdb.connect(str(db_path)).close()  # raises IOException while a writer holds it
    progress = await build_fresh(settings, db_path, None if quiet else print_progress)
    swap_in(db_path)
    snap = snapshot_path(db_path)
    shutil.copyfile(db_path, snap.with_name(snap.name + ".tmp"))  # this process holds no lock on it
    os.replace(snap.with_name(snap.name + ".tmp"), snap)
    return progress


async def request_rebuild(settings: Settings, timeout: float = REBUILD_TIMEOUT) -> dict[str, Any]:
    """Ask the running projection to rebuild itself; its answer, or ``Unavailable``."""
    nc = await connect(settings.nats_url, "ledger-analytics-cli")
    try:
        msg = await nc.request(rebuild_subject(settings), b"{}", timeout=timeout)
    except nats.errors.NoRespondersError:
        raise Unavailable(
            "the analytics file is held by a process that is not a running projection"
        ) from None
    except nats.errors.TimeoutError:
        raise Unavailable(f"the running projection did not finish the rebuild in {timeout:.0f}s") from None
    finally:
        await nc.drain()
    answer: dict[str, Any] = json.loads(msg.data)
    if not answer.get("ok"):
        raise Unavailable(f"rebuild failed in the running projection: {answer.get('error')}")
    return answer


async def rebuild_anywhere(settings: Settings, db_path: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Offline if the file is free, else through the running projection."""
    began = time.monotonic()
    try:
        progress = await rebuild(settings, db_path, quiet=quiet)
    except duckdb.IOException:
        answer = await request_rebuild(settings)
        return {"rows": answer["rows"], "seconds": answer["seconds"], "where": "running projection"}
    return {"rows": progress.applied, "seconds": time.monotonic() - began, "where": "offline"}


async def rebuild_in_place(projection: AnalyticsProjection) -> dict[str, Any]:
    """``session-ledger analytics rebuild`` while a running projection holds the file: build
    a fresh file from sequence 1 (ingest pauses meanwhile), swap it in, resume from its
    checkpoint + 1. The answer goes back to the requester."""
    began = time.monotonic()
    try:
        progress = await build_fresh(projection.settings, projection.db.path, print_progress)
        db = projection.db
        path, grace, hook = db.path, db.grace_window_s, db.before_commit
        db.close()
        try:
            swap_in(path)
        finally:  # swapped or not, keep a live connection to follow the stream
            projection.db = await open_writer(path, grace_window_s=grace)
            projection.db.before_commit = hook
        await projection.rebind()
        projection.dirty = True
        await projection.maybe_snapshot(force=True)
    except Exception as err:
        log.exception("analytics: rebuild failed")
        return {"ok": False, "error": type(err).__name__}
    return {"ok": True, "rows": progress.applied, "seconds": time.monotonic() - began}


async def run_analytics(
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    path: Path | None = None,
    db: AnalyticsDB | None = None,
    batch: int = BATCH,
) -> None:
    """The analytics component: follow the streams until ``stop``; rebuild on request.

    ``db``, already open, is the writer a caller took to report a held file at once; this
    component then owns it (no close and reopen in between: a reader could take the file).
    """
    if db is None:
        grace = settings.grace_window.total_seconds()
        db = await open_writer(path or db_path_for(settings), grace_window_s=grace)
    projection = AnalyticsProjection(settings, db, batch=batch)
    projection.rebuilder = rebuild_in_place
    try:
        await projection.run(stop, ready)
    finally:
        projection.db.close()
