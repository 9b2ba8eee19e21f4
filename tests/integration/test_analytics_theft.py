"""Race or theft (analytics issue, forensics 3): each reuse incident classified from its
evidence, driven through the real service with a controlled clock (grace window 30 s)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import TokenReused
from projections.analytics.db import AnalyticsDB
from projections.analytics.projection import AnalyticsProjection
from session_ledger.cli import main
from session_ledger.sim.simulate import SimClock, simulated_ledger, start_time

S = 1_000_000


async def replay_after(client: LedgerClient, clock: SimClock, sub: str, rotations: int, wait_s: float) -> str:
    """Start a session, rotate it ``rotations`` times, then replay generation 0 ``wait_s`` later."""
    pair = await client.start_session(sub, client_id=f"{sub}-app")
    first, token = pair.refresh_token, pair.refresh_token
    for _ in range(rotations):
        clock.now_us += S
        token = (await client.rotate(token)).refresh_token
    clock.now_us += int(wait_s * S)
    with pytest.raises(TokenReused):
        await client.rotate(first)
    clock.now_us += 1000 * S  # the next story starts well apart
    return pair.sid


async def test_each_incident_gets_its_verdict_and_evidence(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = await start_time(settings)
    clock = SimClock(start)
    async with simulated_ledger(settings, clock) as client:
        race = await replay_after(client, clock, "alice", 1, 32.0)  # 2 s after the 30 s grace window
        unclear = await replay_after(client, clock, "bob", 1, 100.0)
        late = await replay_after(client, clock, "bob", 1, 400.0)  # long after supersession
        old = await replay_after(client, clock, "carol", 2, 1.0)  # two generations old, at once
    db_path = tmp_path / "t.duckdb"
    db = AnalyticsDB(db_path, grace_window_s=settings.grace_window.total_seconds())
    try:
        await AnalyticsProjection(settings, db).catch_up()
    finally:
        db.close()
    window = ["--since", start.isoformat(), "--until", clock().isoformat()]
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["report", "theft", "--db", str(db_path), *window, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    verdicts = {r["sid"]: r for r in report["incidents: race or theft"]}
    assert {sid: verdicts[sid]["verdict"] for sid in (race, unclear, late, old)} == {
        race: "benign_race",
        unclear: "unclear",
        late: "likely_theft",
        old: "likely_theft",
    }
    assert verdicts[race]["after_supersession_s"] == pytest.approx(32.0)
    assert verdicts[race]["evidence"] == "the previous token, 2.0 s after the grace window"
    assert verdicts[late]["evidence"] == "presented 400.0 s after it was superseded"
    assert verdicts[old]["evidence"] == "2 generations old"
    # generation 0 of carol's session was superseded by the first rotation, 2 s before the replay
    assert verdicts[old]["after_supersession_s"] == pytest.approx(2.0)
    assert all(r["presented_device"] is None and r["same_device"] is None for r in verdicts.values())
    per_user = {r["sub"]: (r["incidents"], r["likely_thefts"], r["benign_races"], r["unclear"])
                for r in report["likely thefts per user"]}  # fmt: skip
    assert per_user == {"alice": (1, 0, 1, 0), "bob": (2, 1, 0, 1), "carol": (1, 1, 0, 0)}
    assert [r["sub"] for r in report["likely thefts per user"]][-1] == "alice"  # thefts first
    assert {r["verdict"]: r["incidents"] for r in report["verdicts"]} == {
        "benign_race": 1, "likely_theft": 2, "unclear": 1
    }  # fmt: skip
    stamp = datetime(2001, 1, 1, tzinfo=UTC)
    empty = ["--since", stamp.isoformat(), "--until", (stamp + timedelta(days=1)).isoformat()]
    assert await asyncio.to_thread(main, ["report", "theft", "--db", str(db_path), *empty, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["likely thefts per user"] == []
