"""Time travel (analytics issue, forensics 1): the sessions valid at past instants, three ways
that share no code — the simulator's own model, DuckDB's ``sessions_at`` (``report sessions
--at``) and the sessions projection's pure fold of the log (``sessions list --at``, what a
rebuild would have answered then) — must name the same sessions."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.config import Settings
from projections.analytics.db import AnalyticsDB
from projections.analytics.projection import AnalyticsProjection
from session_ledger.cli import main
from session_ledger.sim.simulate import SimClock, Simulator, sim_settings, simulated_ledger, start_time
from session_ledger.sim.truth import US, SimConfig, Truth

CFG = SimConfig(users=10, minutes=30, replay_rate=0.3, seed=5, password_change_prob=0.4)


async def run_simulation(settings: Settings) -> Truth:
    clock = SimClock(await start_time(settings))
    async with simulated_ledger(sim_settings(settings, CFG), clock) as client:
        truth = await Simulator(CFG, client, clock, settings.grace_window).run()
    truth.summary(CFG)  # settles every session's end
    assert truth.model_mismatches == 0 and not truth.truncated
    return truth


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """The CLI runs its own event loop: in a thread, beside the test's."""
    capsys.readouterr()
    assert await asyncio.to_thread(main, [*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


async def test_sessions_valid_at_past_instants_agree_with_the_model_and_the_fold(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = await run_simulation(settings)
    db_path = tmp_path / "t.duckdb"
    db = AnalyticsDB(db_path, grace_window_s=settings.grace_window.total_seconds())
    try:
        await AnalyticsProjection(settings, db).catch_up()
    finally:
        db.close()
    span_us = int((truth.until - truth.since).total_seconds() * US)
    checked = 0
    for k in range(1, 7):
        t_us = span_us * k // 7 + 1234  # off the simulator's event times
        at = truth.since + timedelta(microseconds=t_us)
        model = {s.sid for s in truth.sessions if s.start_us <= t_us < (s.end_us or span_us + 1)}
        stamp = at.astimezone(UTC).replace(tzinfo=None).isoformat()
        report = await cli(capsys, "report", "sessions", "--db", str(db_path), "--at", stamp)
        duck = {r["sid"] for r in report["valid sessions"]}
        listing = await cli(capsys, "sessions", "list", "--at", stamp, "--nats-url", settings.nats_url)
        fold = {v["sid"] for v in listing["sessions"]}
        assert duck == model == fold, at
        users = {r["sub"]: r["sessions"] for r in report["valid users"]}
        assert users == {sub: sum(1 for v in listing["sessions"] if v["sub"] == sub) for sub in users}
        assert sum(r["sessions"] for r in report["valid devices (by client id)"]) == len(model)
        checked += len(model)
    assert checked > 20  # the instants saw real traffic
    one = next(s for s in truth.sessions if s.end_us is not None)
    at = (truth.since + timedelta(microseconds=one.start_us + 1)).astimezone(UTC).replace(tzinfo=None)
    mine = await cli(capsys, "sessions", "list", "--at", at.isoformat(), "--sub", one.sub, "--all",
               "--nats-url", settings.nats_url)  # fmt: skip
    assert one.sid in {v["sid"] for v in mine["sessions"]}
    assert {v["sub"] for v in mine["sessions"]} == {one.sub}
    out = tmp_path / "r.html"
    assert main(["report", "html", "--db", str(db_path), "--at", at.isoformat(), "-o", str(out)]) == 0
    assert "valid at" in out.read_text() and one.sid in out.read_text()


def test_sessions_list_needs_a_user_without_at(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "list"]) == 2
    assert "--sub is required" in capsys.readouterr().err
    assert main(["sessions", "list", "--at", "yesterday"]) == 2
