"""Analytics: stream -> DuckDB ingest vs the raw pull consumer (same run, same batches),
and the summary report over 10,000,000 events made fast by replicating ingested rows."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from bench.analytics_ingest import load, projection, raw_pull, report_seconds, window_rates
from bench.common import Report, Row, Stat
from ledger.config import Settings
from ledger.streaming.embedded import NatsServer, free_port
from projections.analytics.projection import BATCH
from projections.analytics.reports import build, window
from projections.analytics.schema import fold_sessions

TEN_MILLION = 10_000_000


def _replicate(db_path: Path, total: int) -> int:
    """Copies of the ingested events with shifted seqs and distinct sids, up to ``total`` rows,
    folded into ``session_facts`` as ingest folds them (the report reads both tables)."""
    with duckdb.connect(str(db_path)) as conn:
        row = conn.execute("SELECT count(*), max(seq) FROM events").fetchone()
        assert row is not None
        n, top = int(row[0]), int(row[1])
        copies = max(0, total // n - 1)
        cols = [r[0] for r in conn.execute("DESCRIBE events").fetchall()]
        select = ", ".join(
            f"seq + {top} * k AS seq" if c == "seq" else "sid || '.' || k AS sid" if c == "sid" else c
            for c in cols
        )
        conn.execute(f"INSERT INTO events SELECT {select} FROM events, range(1, {copies + 1}) t(k)")  # noqa: S608
        fold_sessions(conn, top)  # what ingest would have done: the copies' sessions are real rows too
        result = conn.execute("SELECT count(*) FROM events").fetchone()
        return int(result[0]) if result else 0


def growth(report: Report, marks: list[tuple[int, float]], raw: Stat, at: list[int]) -> None:
    """The ingest rate while the file holds m events (the last 10% before m), beside the raw pull:
    a flat curve means a batch costs the same in a big file as in a small one."""
    rates = window_rates(marks, at)
    for m, r in rates.items():
        value = Stat(r, r, r)
        met = r >= 0.7 * raw.median
        report.add(Row("analytics", f"ingest at {m:,} events (last 10%)", "ev/s", value, "raw pull", raw,
                       ">= 0.70x", met))  # fmt: skip
    if len(rates) > 1:
        first, last = rates[min(rates)], rates[max(rates)]
        flat = Stat(last / first, last / first, last / first)
        report.add(Row("analytics", f"ingest rate at {max(rates):,} / at {min(rates):,} events", "x", flat,
                       target=">= 0.80x", met=flat.median >= 0.8))  # fmt: skip
    if (halves := half_rates(marks)) is not None:
        ratio = halves[1] / halves[0]
        report.add(Row("analytics", "ingest rate, 2nd half / 1st half of the run", "x",
                       Stat(ratio, ratio, ratio), target=">= 0.80x", met=ratio >= 0.8,
                       note="each half holds a WAL checkpoint"))  # fmt: skip


def half_rates(marks: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Ingest rates over the first and the second half of the run. DuckDB checkpoints its WAL
    every ~460k events here (``WAL_LIMIT``, ~1 s each): a 10% window holds one or none, so the
    windows above compare the checkpoint schedule as much as the file's size; halves of a 1M
    run hold one each."""
    if len(marks) < 4:
        return None
    end_n, end_t = marks[-1]
    mid_n, mid_t = min(marks, key=lambda m: abs(m[0] - end_n / 2))
    if not 0 < mid_t < end_t:
        return None
    return mid_n / mid_t, (end_n - mid_n) / (end_t - mid_t)


def _summary_seconds(db_path: Path, reps: int) -> Stat:
    with duckdb.connect(str(db_path), read_only=True) as conn:
        w = window(conn, None, None)
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            build(conn, "summary", w)
            times.append(time.perf_counter() - began)
    return Stat.of(times)


GROWTH_AT = (100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)


async def run(report: Report, *, quick: bool, data: Path, ingest_events: int | None = None) -> None:
    n = ingest_events or (200_000 if quick else 1_000_000)
    server = NatsServer(store_dir=data / "js", port=free_port()).start()
    marks: list[tuple[int, float]] = []
    try:
        settings = Settings(nats_url=server.url, data_dir=data / "data")
        await load(settings, n)
        # The raw pull before and after the ingest: the machine is shared, the ratio is same-run.
        raws = [await raw_pull(settings, n, BATCH, nats_py_fetch=False)]
        db_path = data / "data" / "analytics.duckdb"
        ingest = Stat.of([await projection(settings, db_path, BATCH, marks)])
        raws.append(await raw_pull(settings, n, BATCH, nats_py_fetch=False))
        raw = Stat.of(raws)
    finally:
        server.stop()
    report.add(Row("analytics", f"raw pull consumer, {n:,} events", "ev/s", raw))
    report.add(
        Row(
            "analytics",
            f"stream -> DuckDB ingest, {n:,} events",
            "ev/s",
            ingest,
            "raw pull",
            raw,
            ">= 0.70x",
            ingest.median >= 0.7 * raw.median,
        )
    )
    growth(report, marks, raw, [m for m in GROWTH_AT if m < n] + [n])
    summary_n = Stat.of([report_seconds(db_path)["summary"]])
    report.add(Row("analytics", f"summary report over {n:,} events", "s", summary_n))
    rows = _replicate(db_path, TEN_MILLION)
    ten = _summary_seconds(db_path, 3)
    report.add(
        Row(
            "analytics",
            f"summary report over {rows:,} events",
            "s",
            ten,
            target="< 1 s",
            met=ten.median < 1.0,
        )
    )
