"""Policy dry-run (analytics issue, forensics 2): every figure of ``report whatif`` equals what
a real ledger service running the candidate policy answers to the same traffic.

The simulator runs once under the recorded policy and keeps its trace (the requests the
ledger recorded, in logical terms). The dry-run replays the *log* through ``decide``; the
check sends the *trace* to a real service configured with the candidate (``sim.trace``).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.config import Settings
from ledger.domain.decide import ReusePolicy
from projections.analytics.db import AnalyticsDB
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.whatif import EVENT_COLUMNS, Candidate, dry_run, requests_from
from session_ledger.cli import main
from session_ledger.sim.simulate import SimClock, Simulator, sim_settings, simulated_ledger, start_time
from session_ledger.sim.trace import replay_trace
from session_ledger.sim.truth import SimConfig, Truth

CFG = SimConfig(users=12, minutes=40, replay_rate=0.5, seed=7, password_change_prob=0.3)
CANDIDATES: list[tuple[list[str], dict[str, Any]]] = [
    ([], {}),  # the recorded policy: nothing changes
    (["--grace", "10m"], {"grace_window": timedelta(minutes=10)}),  # replays close to a rotation missed
    (["--policy", "user"], {"reuse_policy": ReusePolicy.USER}),  # a replay logs the whole user out
    (["--idle", "2m", "--absolute", "20m"], {"refresh_idle_ttl": timedelta(minutes=2),
                                             "session_absolute_ttl": timedelta(minutes=20)}),
    (["--grace", "0", "--policy", "user", "--idle", "1d"], {"grace_window": timedelta(0),
     "reuse_policy": ReusePolicy.USER, "refresh_idle_ttl": timedelta(days=1)}),
]  # fmt: skip


async def recorded_run(settings: Settings) -> Truth:
    clock = SimClock(await start_time(settings))
    async with simulated_ledger(sim_settings(settings, CFG), clock) as client:
        truth = await Simulator(CFG, client, clock, settings.grace_window).run()
    assert truth.model_mismatches == 0 and not truth.truncated
    return truth


async def test_every_whatif_figure_equals_running_that_policy_on_the_same_traffic(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = await recorded_run(settings)
    db_path = tmp_path / "w.duckdb"
    db = AnalyticsDB(db_path, grace_window_s=settings.grace_window.total_seconds())
    try:
        await AnalyticsProjection(settings, db).catch_up()
    finally:
        db.close()
    window = ["--since", truth.since.isoformat(), "--until", truth.until.isoformat()]
    changed = set()
    for flags, overrides in CANDIDATES:
        capsys.readouterr()
        argv = ["report", "whatif", "--db", str(db_path), *window, *flags, "--json"]
        assert await asyncio.to_thread(main, argv) == 0
        report = json.loads(capsys.readouterr().out)
        dry = {r["figure"]: r["candidate"] for r in report["what-if"]}
        actual = {r["figure"]: r["actual"] for r in report["what-if"]}
        candidate = sim_settings(settings, CFG).model_copy(update=overrides)
        real = await replay_trace(candidate, truth.trace, await start_time(settings))
        assert dry == real, flags
        assert actual["differ_from_log"] == 0 and actual["replays_caught"] == len(truth.replays)
        assert actual["refreshes"] == sum(s.rotations for s in truth.sessions)
        changed |= {name for name, value in dry.items() if value != actual[name]}
    # the candidates exercised every kind of change the report can show
    assert {"replays_missed", "refreshes_refused_revoked", "user_cuts_by_reuse",
            "refreshes_refused_expired", "sessions_expired_early", "users_logged_out"} <= changed  # fmt: skip


def test_bad_candidate_values_are_usage_errors(tmp_path: Path) -> None:
    db = tmp_path / "empty.duckdb"
    AnalyticsDB(db).close()
    assert main(["report", "whatif", "--db", str(db), "--grace", "5s"]) == 0  # an empty log: zeros
    for flags in (["--grace", "soon"], ["--idle", "0"], ["--absolute=-1d"]):
        assert main(["report", "whatif", "--db", str(db), *flags]) == 2, flags
    page = tmp_path / "r.html"
    assert main(["report", "html", "--db", str(db), "--policy", "user", "-o", str(page)]) == 0
    assert "what-if (policy dry-run)" in page.read_text()
    assert main(["report", "html", "--db", str(db), "-o", str(page)]) == 0
    assert "what-if" not in page.read_text()  # only when a candidate is given
    with pytest.raises(SystemExit) as exited:
        main(["report", "whatif", "--db", str(db), "--policy", "everyone"])
    assert exited.value.code == 2


def test_decisions_own_events_are_not_requests_and_refused_rotations_stay_refused() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def row(seq: int, kind: str, sid: str | None, at_s: int, **more: Any) -> dict[str, Any]:
        at = t0 + timedelta(seconds=at_s)
        return {**dict.fromkeys(EVENT_COLUMNS), "seq": seq, "type": kind, "sid": sid, "sub": "u",
                "occurred_at": at, **more}  # fmt: skip

    a, b = "a" * 22, "b" * 22
    rows = [
        row(1, "SessionStarted", a, 0, idle_ttl_s=600, absolute_ttl_s=3600, generation=0),
        row(2, "TokenRotated", a, 10, sub=None, generation=1),
        row(3, "UserSessionsRevoked", None, 20, reason="password_change"),
        row(4, "TokenRotated", a, 19, sub=None, generation=2),  # read before the cut, refused after it
        row(5, "SessionStarted", b, 30, idle_ttl_s=600, absolute_ttl_s=3600, generation=0),
        row(6, "TokenRotated", b, 40, sub=None, generation=1),
        row(7, "UserSessionsRevoked", None, 100, reason="reuse"),  # the user policy's own cut...
        row(8, "ReuseDetected", b, 100, presented_generation=0, generation=1, policy="user"),  # ...for this
    ]
    requests = requests_from(rows)
    assert [(r.kind, r.refused) for r in requests] == [
        ("login", False), ("refresh", False), ("revoke_all", False), ("refresh", True), ("login", False),
        ("refresh", False), ("replay", False),
    ]  # fmt: skip
    recorded = Candidate(grace=timedelta(seconds=30), reuse=ReusePolicy.USER)
    figures = dry_run(requests, recorded)
    assert figures["differ_from_log"] == 0 and figures["refreshes_refused_revoked"] == 1
    assert (figures["replays_caught"], figures["user_cuts_by_reuse"], figures["revoke_alls"]) == (1, 1, 1)
    wider = dry_run(requests, Candidate(grace=timedelta(minutes=5), reuse=ReusePolicy.USER))
    assert (wider["replays_missed"], wider["user_cuts_by_reuse"], wider["differ_from_log"]) == (1, 0, 1)
