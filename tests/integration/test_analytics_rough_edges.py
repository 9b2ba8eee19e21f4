"""Rough edges analysts hit (analytics issue, part 2), on hand-made DuckDB files and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from projections.analytics.db import AnalyticsDB, open_writer
from projections.analytics.html import render_html
from projections.analytics.reports import Window, parse_time
from projections.analytics.schema import create_schema, fold_sessions
from session_ledger.cli import main

NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
Row = tuple[Any, ...]
COLUMNS = "seq, subject, type, occurred_at, sid, sub, generation, client_id, idle_ttl_s, absolute_ttl_s, " \
    "presented_generation, superseded_at, policy, stream_time"  # fmt: skip


def started(seq: int, at: datetime, sid: str, sub: str = "ann") -> Row:
    return (seq, "s", "SessionStarted", at, sid, sub, 0, "web", 3600, 86400, None, None, None, at)


def rotated(seq: int, at: datetime, sid: str, generation: int) -> Row:
    return (seq, "s", "TokenRotated", at, sid, None, generation, None, None, None, None, None, None, at)


def reuse(seq: int, at: datetime, sid: str, sub: str = "ann") -> Row:
    return (seq, "s", "ReuseDetected", at, sid, sub, 2, None, None, None, 0, None, "family", at)


def make_db(path: Path, events: list[Row]) -> Path:
    conn = duckdb.connect(str(path))
    try:
        create_schema(conn)
        if events:
            conn.executemany(f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 14)})", events)
        fold_sessions(conn, 0)
    finally:
        conn.close()
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def figures(capsys: pytest.CaptureFixture[str], db: Path, *window: str) -> dict[str, Any]:
    rows = cli(capsys, "report", "summary", "--db", str(db), *window)["summary"]
    return {r["figure"]: r["value"] for r in rows}


def test_reports_are_evaluated_as_of_now_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Traffic stopped two days ago: the sessions it left are dead now (idle 1 h), not active."""
    old = NOW - timedelta(days=2)
    db = make_db(
        tmp_path / "a.duckdb", [started(1, old, "s1"), rotated(2, old + timedelta(minutes=5), "s1", 1)]
    )
    default, now = figures(capsys, db), figures(capsys, db, "--until", "now")
    for got in (default, now):
        assert (got["sessions_active"], got["sessions_idle_expired"]) == (0, 1)
        assert abs(datetime.fromisoformat(got["until"]) - NOW) < timedelta(minutes=5)
    at_horizon = figures(capsys, db, "--until", (old + timedelta(minutes=5)).isoformat())
    assert at_horizon["sessions_active"] == 1  # what the report said before
    sql = cli(
        capsys, "sql", "SELECT count(*) FILTER (WHERE censored) AS active FROM sessions_now", "--db", str(db)
    )
    assert sql["result"] == [{"active": 0}]


def test_future_events_of_a_simulation_stay_in_the_default_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The simulator's clock runs ahead of the wall clock: the default is its newest event then."""
    ahead = NOW + timedelta(minutes=30)
    db = make_db(tmp_path / "f.duckdb", [started(1, ahead, "s1")])
    got = figures(capsys, db)
    assert (got["sessions_started"], got["sessions_active"]) == (1, 1)
    assert datetime.fromisoformat(got["until"]) == ahead


def test_now_is_a_time_everywhere_a_time_is_taken() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_time("now", now=now) == parse_time(" NOW ", now=now) == datetime(2026, 5, 1, 12, 0)
    assert parse_time("0m", now=now) == parse_time("now", now=now)


@pytest.mark.parametrize("span", [timedelta(minutes=10), timedelta(hours=5), timedelta(days=3)])
def test_the_replay_reports_first_table_has_one_stable_key(
    span: timedelta, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = NOW - timedelta(days=5)
    events = [started(1, first, "s1"), reuse(2, first, "s1"), started(3, first + span, "s2"),
              reuse(4, first + span, "s2")]  # fmt: skip
    db = make_db(tmp_path / "r.duckdb", events)
    data = cli(capsys, "report", "replay", "--db", str(db))
    assert list(data) == ["incidents over time", "by user", "by client", "incidents"]
    assert sum(r["incidents"] for r in data["incidents over time"]) == 2
    assert len({r["bucket"] for r in data["incidents over time"]}) == 1


def test_an_empty_window_gives_zeros_a_total_row_and_a_sane_axis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_db(tmp_path / "e.duckdb", [started(1, NOW - timedelta(hours=1), "s1")])
    window = ("--since", "2001-01-01", "--until", "2001-01-02")
    got = figures(capsys, db, *window)
    assert (got["sessions_started"], got["rotations"], got["tokens_issued"]) == (0, 0, 0)
    [expiration] = cli(capsys, "report", "expiration", "--db", str(db), *window).values()
    assert [(r["client_id"], r["tokens_issued"], r["tokens_used"]) for r in expiration] == [("(all)", 0, 0)]
    [usage] = cli(capsys, "report", "usage", "--db", str(db), *window).values()
    assert [(r["client_id"], r["sessions"], r["rotations"], r["session_days"]) for r in usage] == [
        ("(all)", 0, 0, 0)
    ]
    sessions = cli(capsys, "report", "sessions", "--db", str(db), *window)
    durations = sessions["durations (Kaplan-Meier; active sessions censored)"]
    assert [(r["client_id"], r["sessions"], r["ended"], r["censored"]) for r in durations] == [
        ("(all)", 0, 0, 0)
    ]
    conn = duckdb.connect(str(db), read_only=True)
    with conn:
        page = render_html(conn, Window(datetime(2001, 1, 1), datetime(2001, 1, 2)), "live")
    assert "1e-09" not in page and ">1</text>" in page  # the empty histogram's axis: 0 .. 1


def test_since_later_than_until_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = make_db(tmp_path / "w.duckdb", [])
    assert main(["report", "summary", "--db", str(db), "--since", "2026-02-01", "--until", "2026-01-01"]) == 2
    assert "later than --until" in capsys.readouterr().err
    assert main(["report", "summary", "--db", str(db), "--since", "now", "--until", "1d"]) == 2


def test_sql_says_when_it_answered_from_the_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_db(tmp_path / "s.duckdb", [started(1, NOW, "s1")])
    writer = AnalyticsDB(path)  # holds the file, as `up` does
    try:
        asyncio.run(writer.publish_snapshot())
        assert cli(capsys, "sql", "SELECT count(*) AS n FROM events", "--db", str(path))["result"] == [
            {"n": 1}
        ]
        capsys.readouterr()
        assert main(["sql", "SELECT 1 AS one", "--db", str(path)]) == 0
        assert "snapshot" in capsys.readouterr().err
    finally:
        writer.close()
    assert main(["sql", "SELECT 1 AS one", "--db", str(path)]) == 0  # the live file: no note
    assert "snapshot" not in capsys.readouterr().err


HOLD_READER = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1], read_only=True)
conn.execute("SELECT count(*) FROM events").fetchall()
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_starting_writer_waits_for_a_reader_of_the_live_file(tmp_path: Path) -> None:
    """CI flake: `analytics run` closed its writer to reopen it later; an analyst's query took the
    file in between and the projection never started. The writer now waits readers out."""
    path = make_db(tmp_path / "r.duckdb", [started(1, NOW, "s1")])

    async def scenario(hold: float, wait: float) -> AnalyticsDB:
        reader = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_READER, str(path), str(hold), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert reader.stdout is not None
            assert await asyncio.wait_for(reader.stdout.readline(), 60) == b"holding\n"
            return await open_writer(path, wait=wait)
        finally:
            with contextlib.suppress(ProcessLookupError):
                reader.kill()
            await reader.wait()

    with pytest.raises(duckdb.IOException, match=r"(?i)lock"):  # another holder for good: a clear error
        asyncio.run(scenario(hold=30, wait=0.5))
    writer = asyncio.run(scenario(hold=1.0, wait=60))  # a query's worth of holding: waited out
    try:
        assert writer.conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    finally:
        writer.close()
