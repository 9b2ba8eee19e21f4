"""Analytics pieces: staging lines, the Kaplan-Meier view against the simulator's KM,
report rendering, HTML escaping, malformed payloads (real server), in-memory DuckDB."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.config import Settings
from ledger.domain.events import UPCASTERS, upcast
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from projections.analytics.html import bar_chart
from projections.analytics.projection import AnalyticsDB, AnalyticsProjection, ack_position, stage_line
from projections.analytics.reports import Table, parse_time, render
from projections.analytics.schema import create_schema, fold_sessions
from session_ledger.sim.synthetic import synthetic_events
from session_ledger.sim.truth import km_quantiles

T0 = datetime(2026, 1, 1)
AS_OF = T0 + timedelta(days=30)


def test_stage_line_keeps_payload_bytes_and_escapes_subjects() -> None:
    line = stage_line(b'{"type":"X"}', 7, "ledger.ev.s.abc.started", 1_700_000_000_123_456_789)
    assert json.loads(line) == {
        "seq": 7,
        "subject": "ledger.ev.s.abc.started",
        "ts_us": 1_700_000_000_123_456,
        "e": {"type": "X"},
    }
    odd = json.loads(stage_line(b'{"a":1', 1, 'we"ird\\', 0))
    assert odd["subject"] == 'we"ird\\' and odd["e"] is None
    assert json.loads(stage_line(b'{"a":1,}', 1, "s", 0, strict=True))["e"] is None
    assert json.loads(stage_line(b'{"a":\n1}', 1, "s", 0))["e"] == {"a": 1, "schema_version": 1}


@given(
    kind=st.sampled_from(sorted({kind for kind, _ in UPCASTERS})),
    other=st.sampled_from(["SessionStarted", "TokenRotated", "X"]),
)
def test_stage_line_upcasts_exactly_the_types_with_an_upcaster(kind: str, other: str) -> None:
    """The prefix test in front of the markers (a speed-up) must not skip an upcast."""
    old = json.dumps({"type": kind, "schema_version": 1, "kid": "k1"}, separators=(",", ":")).encode()
    staged = json.loads(stage_line(old, 1, "s", 0))["e"]
    assert staged == upcast({"type": kind, "schema_version": 1, "kid": "k1"}) and staged["schema_version"] > 1
    kept = json.dumps({"type": other, "schema_version": 1}, separators=(",", ":")).encode()
    assert stage_line(kept, 1, "s", 0).endswith(b'"e":' + kept + b"}")  # byte for byte, no parse


def test_ack_position_reads_v1_and_v2_ack_subjects() -> None:
    assert ack_position("$JS.ACK.LEDGER.analytics.1.42.40.1700000000000000000.3") == (42, 1700000000000000000)
    v2 = "$JS.ACK.hub.ACCHASH.LEDGER.analytics.1.42.40.1700000000000000000.3.rnd"
    assert ack_position(v2) == (42, 1700000000000000000)


def _session_rows(durations: list[tuple[int, bool]]) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    seq = 0
    for i, (d, died) in enumerate(durations):
        sid = f"{i:022d}"
        start = T0 if died else AS_OF - timedelta(seconds=d)
        seq += 1
        rows.append((seq, "SessionStarted", start, sid, "u", 0, 10**9, 10**9, None))
        if died:
            seq += 1
            rows.append((seq, "SessionRevoked", T0 + timedelta(seconds=d), sid, "u", 0, None, None, "logout"))
    return rows


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.booleans()), min_size=1, max_size=40))
def test_kaplan_meier_view_matches_the_simulator_estimator(durations: list[tuple[int, bool]]) -> None:
    conn = duckdb.connect()  # the same schema in memory
    create_schema(conn)
    conn.executemany(
        "INSERT INTO events (seq, subject, type, occurred_at, sid, sub, generation, idle_ttl_s, "
        "absolute_ttl_s, reason) VALUES (?, 's', ?, ?, ?, ?, ?, ?, ?, ?)",
        _session_rows(durations),
    )
    fold_sessions(conn)  # what ingest does in each batch's transaction
    row = conn.execute(
        "SELECT sessions, ended, censored, p50_s, p90_s, p99_s FROM session_durations_at(?, ?) "
        "WHERE client_id IS NULL",
        [T0 - timedelta(days=1), AS_OF],
    ).fetchone()
    expected = km_quantiles([(float(d), died) for d, died in durations])
    died = sum(1 for _, x in durations if x)
    assert row == (
        len(durations),
        died,
        len(durations) - died,
        expected["p50"],
        expected["p90"],
        expected["p99"],
    )


def test_parse_time_accepts_iso_and_relative_ages() -> None:
    now = datetime.fromisoformat("2026-11-28T12:00:00+00:00")
    assert parse_time("2026-11-28T10:00:00+02:00", now=now) == datetime(2026, 11, 28, 8)
    assert parse_time("2026-11-28", now=now) == datetime(2026, 11, 28)
    assert parse_time("24h", now=now) == datetime(2026, 11, 27, 12)
    assert parse_time("30m", now=now) == datetime(2026, 11, 28, 11, 30)


def test_render_formats() -> None:
    table = Table("t", ["a", "b"], [(1, datetime(2026, 1, 1)), (None, "x,y")])
    assert json.loads(render([table], "json")) == {
        "t": [{"a": 1, "b": "2026-01-01T00:00:00"}, {"a": None, "b": "x,y"}]
    }
    assert render([table], "csv").splitlines() == ["# t", "a,b", "1,2026-01-01 00:00:00", ',"x,y"']
    assert render([table], "table").splitlines()[0] == "== t"


def test_charts_escape_labels_and_need_no_external_assets() -> None:
    svg = bar_chart("<b>t</b>", ["<script>x</script>"], [("n", [3])], stacked=False, unit="count")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "href" not in svg
    assert "no data" in bar_chart("empty", [], [("n", [])], stacked=True, unit="")


async def test_malformed_payloads_are_kept_as_rows_not_dropped(settings: Settings, tmp_path: Path) -> None:
    nc = await connect(settings.nats_url, "test-garbage")
    try:
        store = EventStore(nc, settings)
        await store.ensure_stream()
        good = list(synthetic_events(5))
        js = nc.jetstream()
        for subject, payload in good[:2]:
            await js.publish(subject, payload)
        for garbage in (b"not json", b'{"type": "SessionStarted", "sid": "x"', b"[1,2]", b'{"a":"\\x"}'):
            await js.publish("ledger.ev.s.garbage.started", garbage)
        for subject, payload in good[2:]:
            await js.publish(subject, payload)
        total = await store.last_seq()
    finally:
        await nc.drain()
    db = AnalyticsDB(tmp_path / "g.duckdb")
    try:
        await AnalyticsProjection(settings, db).catch_up()
        rows = db.conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE type = '_malformed') FROM events"
        ).fetchone()
    finally:
        db.close()
    assert rows == (total, 4)
