"""Analytics ingest benchmark: events/s into DuckDB vs the raw pull-consumer rate, same run.

    python bench/analytics_ingest.py --events 1000000

Starts its own nats-server (temp dir, free loopback port), loads N schema-valid events,
then measures (1) a bare pull consumer that fetches and acks the same batches and does
nothing else, (2) the analytics projection (fetch + NDJSON stage + DuckDB load + checkpoint),
and (3) how long the summary and sessions reports take over the result. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig

from ledger.config import Settings
from ledger.streaming.connection import connect
from ledger.streaming.embedded import NatsServer, free_port
from ledger.streaming.pull import Puller
from ledger.streaming.store import EventStore
from projections.analytics.projection import BATCH, AnalyticsDB, AnalyticsProjection, Progress, open_reader
from projections.analytics.reports import build, window
from session_ledger.sim.synthetic import synthetic_events

LOAD_WAIT = 600.0  # seconds the stream may take to hold every published event


async def load(settings: Settings, n: int) -> float:
    nc = await connect(settings.nats_url, "bench-loader")
    try:
        await EventStore(nc, settings).ensure_stream()
        js = nc.jetstream()
        began = time.perf_counter()
        for i, (subject, payload) in enumerate(synthetic_events(n)):
            await nc.publish(subject, payload)
            if i % 20_000 == 0:
                await nc.flush()  # keep the server's slow-consumer guard happy
        give_up = time.monotonic() + LOAD_WAIT
        while (await js.stream_info(settings.stream)).state.messages < n:
            if time.monotonic() > give_up:
                raise TimeoutError(f"the stream did not reach {n} events in {LOAD_WAIT:.0f} s")
            await asyncio.sleep(0.1)
        return n / (time.perf_counter() - began)
    finally:
        await nc.drain()


async def raw_pull(settings: Settings, n: int, batch: int, *, nats_py_fetch: bool) -> float:
    """The floor the projection is compared with: pull + one ack per batch, no processing.
    ``nats_py_fetch`` uses nats-py's ``fetch()`` instead of the projection's ``Puller``."""
    nc = await connect(settings.nats_url, "bench-raw")
    try:
        js = nc.jetstream()
        durable = f"bench_raw_{int(nats_py_fetch)}"
        config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.ALL, max_ack_pending=batch * 4)
        await js.add_consumer(settings.stream, config)
        if nats_py_fetch:
            sub = await js.pull_subscribe_bind(durable, stream=settings.stream)
        else:
            puller = await Puller(nc, settings.stream, durable).start()
        got, began = 0, time.perf_counter()
        give_up = time.monotonic() + max(60.0, n / 2_000)  # far below any rate seen: a stuck pull
        while got < n and time.monotonic() < give_up:
            if nats_py_fetch:
                try:
                    msgs = await sub.fetch(batch, timeout=2.0)
                except nats.errors.TimeoutError:
                    continue
            else:
                msgs = await puller.fetch(batch, wait=2.0)
            got += len(msgs)
            if msgs:
                await msgs[-1].ack()
        rate = got / (time.perf_counter() - began)
        await js.delete_consumer(settings.stream, durable)
        return rate
    finally:
        await nc.drain()


async def projection(
    settings: Settings, db_path: Path, batch: int, marks: list[tuple[int, float]] | None = None
) -> float:
    """Events/s until the rows are durable in the file: the final CHECKPOINT (on close) counts.
    ``marks`` gets (events applied, seconds since start) after every batch: the growth curve."""
    db = AnalyticsDB(db_path)
    began = time.perf_counter()

    def mark(p: Progress) -> None:
        if marks is not None:
            marks.append((p.applied, time.perf_counter() - began))

    try:
        progress = await AnalyticsProjection(settings, db, batch=batch, snapshot_every=None).catch_up(mark)
    finally:
        db.close()
    return progress.applied / (time.perf_counter() - began)


def window_rates(marks: list[tuple[int, float]], at: list[int], width: float = 0.1) -> dict[int, float]:
    """Ingest rate over the batches that end in (m - width*m, m], for each m of ``at`` reached:
    the rate while the file holds about m events (flat = ingest does not slow as it grows)."""
    out = {}
    for m in at:
        inside = [(n, t) for n, t in marks if m * (1 - width) <= n <= m]
        before = [(n, t) for n, t in marks if n < m * (1 - width)]
        if not inside:
            continue
        n0, t0 = before[-1] if before else (0, 0.0)
        n1, t1 = inside[-1]
        if t1 > t0:
            out[m] = (n1 - n0) / (t1 - t0)
    return out


def report_seconds(db_path: Path) -> dict[str, float]:
    conn, _ = open_reader(db_path)
    out = {}
    with conn:
        w = window(conn, None, None)
        for name in ("summary", "sessions", "replay", "expiration"):
            began = time.perf_counter()
            build(conn, name, w)
            out[name] = round(time.perf_counter() - began, 3)
    return out


async def main(n: int, batch: int, with_fetch: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = NatsServer(store_dir=root / "js", port=free_port()).start()
        try:
            settings = Settings(nats_url=server.url, data_dir=root / "data")
            publish = await load(settings, n)
            raw = await raw_pull(settings, n, batch, nats_py_fetch=False)
            raw_fetch = await raw_pull(settings, n, batch, nats_py_fetch=True) if with_fetch else None
            db_path = root / "data" / "analytics.duckdb"
            ingest = await projection(settings, db_path, batch)
            reports = report_seconds(db_path)
            size_mb = db_path.stat().st_size / 1e6
        finally:
            server.stop()
    return {
        "events": n,
        "batch": batch,
        "publish_events_per_s": round(publish),
        "raw_pull_events_per_s": round(raw),
        "raw_nats_py_fetch_events_per_s": None if raw_fetch is None else round(raw_fetch),
        "analytics_events_per_s": round(ingest),
        "ratio_to_raw_pull": round(ingest / raw, 3),
        "duckdb_mb": round(size_mb, 1),
        "report_seconds": reports,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--nats-py-fetch", action="store_true", help="also time nats-py's fetch() (slow)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.events, args.batch, args.nats_py_fetch))))
