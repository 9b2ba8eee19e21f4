"""DuckDB analytics against a real nats-server and a real DuckDB file: ground truth from the
simulator, exactly-once across a crash mid-batch, rebuild equality, reports while running."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ledger.config import Settings
from ledger.contracts.receipts import Receipt, receipt_subject
from ledger.streaming.connection import connect
from ledger.streaming.streams import ensure_receipts_stream
from projections.analytics.projection import AnalyticsDB, AnalyticsProjection, open_reader
from projections.analytics.rebuild import rebuild
from projections.analytics.reports import Window, build, window
from session_ledger.cli import main
from session_ledger.sim.simulate import SimConfig, simulate
from session_ledger.sim.synthetic import synthetic_events

SIM = SimConfig(users=15, minutes=40, replay_rate=0.35, seed=11)
ROOT = Path(__file__).resolve().parents[2]
RUN = [sys.executable, "-c", "import sys; from session_ledger.cli import main; sys.exit(main())"]
TABLES = ("events", "receipts", "session_facts", "user_cuts")
VIEWS = (
    "sessions", "replay_incidents", "revocations", "revocation_receipts", "token_expiration",
    "refresh_usage", "session_durations", "session_histogram", "revocation_latency",
    "replay_daily", "replay_by_user", "replay_by_client",
)  # fmt: skip


async def catch_up(settings: Settings, db_path: Path) -> int:
    db = AnalyticsDB(db_path, grace_window_s=settings.grace_window.total_seconds())
    try:
        return (await AnalyticsProjection(settings, db).catch_up()).applied
    finally:
        db.close()


async def publish_synthetic(settings: Settings, n: int) -> int:
    """Load ``n`` events fast (core publishes into the stream's subjects), wait until stored."""
    nc = await connect(settings.nats_url, "test-loader")
    try:
        js = nc.jetstream()
        from ledger.streaming.store import EventStore

        await EventStore(nc, settings).ensure_stream()
        for subject, payload in synthetic_events(n):
            await nc.publish(subject, payload)
        await nc.flush()
        deadline = time.monotonic() + 30
        while (info := await js.stream_info(settings.stream)).state.messages < n:
            assert time.monotonic() < deadline, "stream did not receive every event"
            await asyncio.sleep(0.05)
        return int(info.state.last_seq)
    finally:
        await nc.drain()


async def publish_more(settings: Settings, n: int) -> int:
    """``n`` more events after what the stream holds; returns the new last sequence."""
    nc = await connect(settings.nats_url, "test-more")
    try:
        js = nc.jetstream()
        for subject, payload in synthetic_events(n, prefix=settings.subject_prefix):
            await js.publish(subject.replace(".ev.s.", ".ev.s.m"), payload)
        return int((await js.stream_info(settings.stream)).state.last_seq)
    finally:
        await nc.drain()


async def publish_one_receipt(settings: Settings) -> None:
    nc = await connect(settings.nats_url, "test-receipt")
    try:
        await ensure_receipts_stream(nc)
        receipt = Receipt(
            verifier="edge-late", event_id="0" * 32, revoke_seq=1, kind="session",
            sid=None, sub="u", kid=None, applied_at=datetime.now(UTC),
        )  # fmt: skip
        await nc.jetstream().publish(receipt_subject("edge-late"), receipt.encode())
    finally:
        await nc.drain()


# The summary as it was, figure by figure from the views and macros (each fold of the
# sessions repeated): the one-pass summary must give the same figures.
REFERENCE_SUMMARY = """
WITH s AS (SELECT * FROM sessions_at($2) WHERE started_at >= $1),
te AS (SELECT * FROM token_expiration_at($1, $2) WHERE client_id IS NULL),
ru AS (SELECT * FROM refresh_usage_at($1, $2) WHERE client_id IS NULL),
sd AS (SELECT * FROM session_durations_at($1, $2) WHERE client_id IS NULL),
ri AS (SELECT * FROM replay_incidents WHERE detected_at >= $1 AND detected_at <= $2),
rv AS (SELECT * FROM revocations WHERE requested_at >= $1 AND requested_at <= $2),
lat AS (SELECT * FROM revocation_latency_at($1, $2))
SELECT
  (SELECT count(*) FROM events WHERE occurred_at >= $1 AND occurred_at <= $2),
  (SELECT count(*) FROM s),
  (SELECT count(*) FROM s WHERE censored),
  (SELECT count(*) FILTER (WHERE end_kind = 'revoked') FROM s),
  (SELECT count(*) FILTER (WHERE end_kind = 'reuse') FROM s),
  (SELECT count(*) FILTER (WHERE end_kind = 'user_revoked') FROM s),
  (SELECT count(*) FILTER (WHERE end_kind = 'idle_expired') FROM s),
  (SELECT count(*) FILTER (WHERE end_kind = 'absolute_expired') FROM s),
  (SELECT coalesce(sum(rotations), 0) FROM s),
  (SELECT count(*) FROM ri),
  (SELECT count(DISTINCT sub) FROM ri),
  (SELECT count(*) FROM (SELECT sub FROM ri GROUP BY sub HAVING count(*) > 1)),
  (SELECT count(*) FILTER (WHERE kind = 'session') FROM rv),
  (SELECT count(*) FILTER (WHERE kind = 'user') FROM rv),
  (SELECT tokens_issued FROM te), (SELECT tokens_expired_unused FROM te),
  (SELECT expiration_rate FROM te), (SELECT rotations_per_session_day FROM ru),
  (SELECT p50_s FROM sd), (SELECT p90_s FROM sd), (SELECT p99_s FROM sd),
  (SELECT p50_ms FROM lat WHERE stage = 'request_to_committed'),
  (SELECT p50_ms FROM lat WHERE stage = 'committed_to_applied'),
  (SELECT count(*) FROM receipts r JOIN rv ON r.event_id = rv.event_id)  -- was a bare count(*)
"""


def assert_summary_matches_views(conn: duckdb.DuckDBPyConnection) -> None:
    full = window(conn, None, None)
    middle = full.until - (full.until - conn.execute("SELECT min(occurred_at) FROM events").fetchone()[0]) / 2  # type: ignore[index]
    for w in (full, Window(middle - timedelta(minutes=3), middle), Window(middle, full.until)):
        got = dict(build(conn, "summary", w)[0].rows)
        want = conn.execute(REFERENCE_SUMMARY, [w.since, w.until]).fetchone()
        assert want is not None
        assert [got[k] for k in list(got)[2:]] == pytest.approx(list(want), nan_ok=True), w


def dump(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    return {name: conn.execute(f"SELECT * FROM {name} ORDER BY ALL").fetchall() for name in TABLES + VIEWS}


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("policy", ["family", "user"])
async def test_report_figures_equal_simulator_ground_truth(
    policy: str, settings_for: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings: Settings = settings_for(reuse_policy=policy)
    user = policy == "user"  # a replay revokes every session of its user (and appends a user cut)
    truth = await simulate(settings, SIM)
    assert truth["model_mismatches"] == 0 and not truth["truncated"]
    assert truth["replays_injected"] >= 3 and truth["password_changes"] >= 1
    assert truth["sessions_ended"].get("idle_expired", 0) >= 1 and truth["sessions_active"] >= 1
    db = tmp_path / "a.duckdb"
    await catch_up(settings, db)
    window_args = ["--db", str(db), "--since", truth["since"], "--until", truth["until"]]
    rows = cli_json(capsys, "report", "summary", *window_args)["summary"]
    got = {r["figure"]: r["value"] for r in rows}
    ended = truth["sessions_ended"]
    expected = {
        "sessions_started": truth["sessions_started"],
        "sessions_active": truth["sessions_active"],
        "sessions_revoked": ended.get("revoked", 0),
        "sessions_reuse": ended.get("reuse", 0),
        "sessions_user_revoked": ended.get("user_revoked", 0),
        "sessions_idle_expired": ended.get("idle_expired", 0),
        "sessions_absolute_expired": ended.get("absolute_expired", 0),
        "rotations": truth["rotations"],
        "replay_incidents": truth["replays_injected"],
        "replay_users": len(truth["replay_users"]),
        "repeat_offenders": truth["repeat_offenders"],
        "session_revocations": truth["logouts"] + (0 if user else truth["replays_injected"]),
        "user_revocations": truth["password_changes"] + (truth["replays_injected"] if user else 0),
        "tokens_issued": truth["tokens_issued"],
        "tokens_expired_unused": truth["tokens_expired_unused"],
        "events": truth["ledger_events_expected"] + 1,  # + the signing key's SigningKeyAdded
    }
    assert {k: got[k] for k in expected} == expected
    assert got["expiration_rate"] == pytest.approx(truth["expiration_rate"])
    for p in ("p50", "p90", "p99"):
        assert got[f"duration_{p}_s"] == pytest.approx(truth["duration_quantiles_s"][p], abs=1e-6)

    replay = cli_json(capsys, "report", "replay", *window_args)
    assert {r["sub"]: r["incidents"] for r in replay["by user"]} == truth["replay_users"]
    assert {r["client_id"]: r["incidents"] for r in replay["by client"]} == truth["replay_clients"]
    assert sum(r["incidents"] for r in replay[next(iter(replay))]) == truth["replays_injected"]
    kind = "user" if user else "session"
    assert all(not r["within_grace"] and r["revocation_kind"] == kind for r in replay["incidents"])

    expiration = cli_json(capsys, "report", "expiration", *window_args)
    overall = expiration[next(iter(expiration))][0]
    assert overall["client_id"] == "(all)" and overall["tokens_used"] == truth["rotations"]

    usage = cli_json(capsys, "report", "usage", *window_args)
    total = usage[next(iter(usage))][0]
    assert total["rotations"] == truth["rotations"] and total["sessions"] == truth["sessions_started"]
    assert total["session_days"] == pytest.approx(truth["session_days"], rel=1e-9)

    revocation = cli_json(capsys, "report", "revocation", *window_args)
    counts = {(r["kind"], r["reason"]): r["revocations"] for r in revocation["revocations"]}
    expected_counts = {
        ("session", "logout"): truth["logouts"],
        ("user" if user else "session", "reuse"): truth["replays_injected"],
        ("user", "password_change"): truth["password_changes"],
    }
    assert counts == {k: v for k, v in expected_counts.items() if v}

    sessions = cli_json(capsys, "report", "sessions", *window_args)
    outcomes: dict[str, int] = {}
    for r in sessions["how sessions ended"]:  # one row per outcome and reason
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + r["sessions"]
    assert outcomes == {**ended, "active": truth["sessions_active"]}

    out = tmp_path / "report.html"
    assert main(["report", "html", "-o", str(out), *window_args]) == 0
    page = out.read_text()
    assert page.count("<svg") == 3 and "src=" not in page and "href=" not in page and "<script" not in page


async def test_crash_mid_batch_then_restart_counts_every_event_once(
    settings: Settings, tmp_path: Path
) -> None:
    total = await publish_synthetic(settings, 20_000)
    db = tmp_path / "crash.duckdb"
    base = [*RUN, "analytics", "run", "--nats-url", settings.nats_url, "--db", str(db), "--batch", "5000"]
    crasher = [sys.executable, "-m", "tests.support.crash_analytics", "2", settings.nats_url, str(db), "5000"]
    crashed = subprocess.run(crasher, timeout=60, capture_output=True, cwd=ROOT)
    assert crashed.returncode == 137  # died after inserting batch 3, before its COMMIT
    with duckdb.connect(str(db)) as conn:
        rows, last = conn.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT last_seq FROM checkpoints WHERE stream = 'LEDGER')"
        ).fetchone() or (0, 0)
    assert rows == last and 0 < rows < 20_000  # committed batches only; the third left no trace

    for pause in (0.4, 0.9):  # plain SIGKILLs at arbitrary moments
        proc = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(pause)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    started = time.monotonic()
    await catch_up(settings, db)
    elapsed = time.monotonic() - started
    with duckdb.connect(str(db), read_only=True) as conn:
        count, distinct, top, checkpoint = conn.execute(
            "SELECT count(*), count(DISTINCT seq), max(seq), (SELECT last_seq FROM checkpoints "
            "WHERE stream = 'LEDGER') FROM events"
        ).fetchone() or (0, 0, 0, 0)
        malformed = conn.execute("SELECT count(*) FROM events WHERE type = '_malformed'").fetchone()
    assert count == distinct == top == checkpoint == total == 20_000
    assert malformed == (0,)
    assert elapsed < 60


async def test_rebuild_from_sequence_one_gives_identical_tables(settings: Settings, tmp_path: Path) -> None:
    await simulate(settings, SimConfig(users=8, minutes=20, replay_rate=0.4, seed=5))
    await publish_receipts(settings, verifiers=("edge-a", "edge-b"))
    db = tmp_path / "live.duckdb"
    await catch_up(settings, db)
    with duckdb.connect(str(db), read_only=True) as conn:
        before = dump(conn)
        assert_summary_matches_views(conn)
        applied = conn.execute(
            "SELECT min(verifiers_applied), count(*) FROM revocations WHERE kind IN ('session', 'user')"
        ).fetchone()
    assert applied is not None and applied[0] == 2 and applied[1] >= 1
    assert len(before["receipts"]) == 2 * applied[1]
    progress = await rebuild(settings, db, quiet=True)
    assert progress.applied == len(before["events"]) + len(before["receipts"])
    with duckdb.connect(str(db), read_only=True) as conn:
        after = dump(conn)
    assert [k for k in before if before[k] != after[k]] == []


async def publish_receipts(settings: Settings, verifiers: tuple[str, ...]) -> None:
    """What edge verifiers publish: one receipt per revocation per verifier."""
    nc = await connect(settings.nats_url, "test-receipts")
    try:
        await ensure_receipts_stream(nc)
        js = nc.jetstream()
        from ledger.streaming.store import EventStore

        async for rec in EventStore(nc, settings).read():
            event = rec.event
            kind = {"SessionRevoked": "session", "UserSessionsRevoked": "user"}.get(event.type)
            if kind is None:
                continue
            for i, verifier in enumerate(verifiers):
                receipt = Receipt(
                    verifier=verifier,
                    event_id=event.event_id,
                    revoke_seq=rec.seq,
                    kind=kind,
                    sid=getattr(event, "sid", None),
                    sub=getattr(event, "sub", None),
                    kid=None,
                    applied_at=(rec.time or datetime.now(UTC)) + timedelta(milliseconds=3 + i),
                )
                await js.publish(receipt_subject(verifier), receipt.encode())
    finally:
        await nc.drain()


PHASE_LIMIT = 90.0  # per phase: a CI box was seen to stall a fresh subprocess for over 30 s


@pytest.mark.timeout(5 * PHASE_LIMIT)
async def test_reports_work_while_the_projection_runs(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = await publish_synthetic(settings, 3_000)
    db = tmp_path / "busy.duckdb"
    proc = subprocess.Popen(
        [*RUN, "analytics", "run", "--nats-url", settings.nats_url, "--db", str(db)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "projection.log").open("wb"),
    )
    try:
        log_file = tmp_path / "projection.log"
        deadline = time.monotonic() + PHASE_LIMIT
        seen = 0
        while seen < total:
            assert time.monotonic() < deadline, (
                f"snapshot showed {seen}/{total} events; log:\n" + (log_file.read_text()[-3000:])
            )
            await asyncio.sleep(0.5)
            try:
                result = cli_json(capsys, "sql", "SELECT count(*) AS n FROM events", "--db", str(db))
            except AssertionError:
                continue  # no snapshot yet
            seen = result["result"][0]["n"]
        conn, source = open_reader(db)
        with conn:
            assert source == "snapshot", (tmp_path / "projection.log").read_text()[-3000:]
            tables = build(conn, "summary", window(conn, None, None))
        assert dict(tables[0].rows)["events"] == total
        capsys.readouterr()
        assert main(["sql", "DROP TABLE events", "--db", str(db)]) == 2  # read-only, refused

        # rebuild while it runs: the projection rebuilds itself on request and carries on
        argv = [*RUN, "analytics", "rebuild", "--nats-url", settings.nats_url, "--db", str(db), "--json"]
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, timeout=PHASE_LIMIT)
        assert done.returncode == 0, done.stderr
        rebuilt = json.loads(done.stdout)
        assert rebuilt["where"] == "running projection" and rebuilt["rows"] == total
        more = await publish_more(settings, 100)
        deadline = time.monotonic() + PHASE_LIMIT
        while seen < more:
            assert time.monotonic() < deadline, "ingest did not resume after the rebuild"
            await asyncio.sleep(0.5)
            seen = cli_json(capsys, "sql", "SELECT count(DISTINCT seq) AS n FROM events", "--db", str(db))[
                "result"
            ][0]["n"]

        # an edge verifier creates the receipts stream later: the running projection picks it up
        await publish_one_receipt(settings)
        receipts = 0
        while receipts < 1:
            assert time.monotonic() < deadline + PHASE_LIMIT, "receipts stream was not followed"
            await asyncio.sleep(0.5)
            receipts = cli_json(capsys, "sql", "SELECT count(*) AS n FROM receipts", "--db", str(db))[
                "result"
            ][0]["n"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert proc.returncode == 0


async def test_projections_rebuild_analytics_and_status_through_the_cli(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """``projections rebuild analytics`` (from the explicit table) and ``status`` with --data-dir."""
    total = await publish_synthetic(settings, 500)
    common = ["--nats-url", settings.nats_url, "--data-dir", str(settings.data_dir)]
    rebuilt = await asyncio.to_thread(cli_json, capsys, "projections", "rebuild", "analytics", *common)
    assert rebuilt["projection"] == "analytics" and rebuilt["events"] == total == rebuilt["last_seq"]
    status = await asyncio.to_thread(cli_json, capsys, "projections", "status", *common)
    rows = {row["projection"]: row for row in status["projections"]}
    assert rows["analytics"]["checkpoint"] == total and rows["analytics"]["lag"] == 0
    assert rows["sessions"]["checkpoint"] is None  # never ran: "not started", not an error
