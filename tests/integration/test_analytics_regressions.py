"""Analytics figures an independent ground-truth run found wrong (analytics issue, part 1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import (
    RevokeSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    SignOutOthersRequest,
    StartSessionRequest,
)
from ledger.contracts.receipts import Receipt, receipt_subject
from ledger.domain.errors import SessionRevokedError, TokenReused
from ledger.domain.events import RecordedEvent, RevokeReason, TokenRotated, UserSessionsRevoked
from ledger.service.app import build_service
from ledger.service.handlers import LedgerService
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from projections.analytics.db import AnalyticsDB, open_reader
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.reports import build, window
from projections.sessions.fold import SessionRecord, decode, fold, session_key
from projections.sessions.runner import RunnerOptions, SessionsRunner
from projections.sessions.store import SessionStore, live_bucket
from tests.support.helpers import all_events


async def catch_up(settings: Settings, path: Path) -> None:
    db = AnalyticsDB(path, grace_window_s=settings.grace_window.total_seconds())
    try:
        await AnalyticsProjection(settings, db, snapshot_every=None).catch_up()
    finally:
        db.close()


def rows(path: Path, sql: str) -> list[dict[str, Any]]:
    conn, _ = open_reader(path)
    with conn:
        cursor = conn.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


async def test_user_policy_incidents_point_at_the_revocation_appended_just_before_them(
    services: Any, settings_for: Any, tmp_path: Path
) -> None:
    """The service appends the user-wide revocation *before* ReuseDetected; the view looked
    after it and found nothing (NULL) or the next incident's revocation."""
    settings: Settings = settings_for(reuse_policy="user", grace_window=timedelta(0))
    await services.start(settings)
    async with await LedgerClient.connect(settings.nats_url) as client:
        for _ in range(2):  # two incidents of one user: each has its own revocation
            pair = await client.start_session("ivan")
            await client.rotate(pair.refresh_token)
            with pytest.raises(TokenReused):
                await client.rotate(pair.refresh_token)
    db = tmp_path / "a.duckdb"
    await catch_up(settings, db)
    revocations = rows(
        db, "SELECT seq, occurred_at FROM events WHERE type = 'UserSessionsRevoked' ORDER BY seq"
    )
    incidents = rows(db, "SELECT * FROM replay_incidents ORDER BY seq")
    assert len(incidents) == len(revocations) == 2
    for incident, revocation in zip(incidents, revocations, strict=True):
        assert incident["revocation_seq"] == revocation["seq"] < incident["seq"]
        assert incident["revocation_kind"] == "user" and incident["revocation_reason"] == "reuse"
        assert incident["revoked_at"] == revocation["occurred_at"] == incident["detected_at"]


async def test_summary_receipts_count_only_the_window(
    client: LedgerClient, settings: Settings, store: EventStore, tmp_path: Path
) -> None:
    """Receipts of the revocations requested in the window (it was a bare count(*))."""
    pair = await client.start_session("judy")
    revoked = await client.revoke_session(pair.sid)
    revocation = await store.last(store.subjects.family_event(pair.sid, "revoked"))
    assert revocation is not None
    nc = await connect(settings.nats_url, "test-receipts")
    try:
        receipt = Receipt(verifier="edge-1", event_id=revocation.event.event_id, revoke_seq=revoked.seq or 0,
                          kind="session", sid=pair.sid, sub="judy", kid=None,
                          applied_at=datetime.now(UTC))  # fmt: skip
        await nc.jetstream().publish(receipt_subject("edge-1"), receipt.encode())
    finally:
        await nc.close()
    db = tmp_path / "r.duckdb"
    await catch_up(settings, db)
    conn, _ = open_reader(db)
    with conn:
        later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        now = build(conn, "summary", window(conn, "2020-01-01T00:00:00", later))
        past = build(conn, "summary", window(conn, "2001-01-01T00:00:00", "2001-01-02T00:00:00"))
    assert dict(now[0].rows)["receipts"] == 1
    assert dict(past[0].rows)["receipts"] == 0  # a bare count(*) said 1 for an empty day in 2001


async def race_a_rotation_with_revoke_all(service: LedgerService, token: str) -> None:
    """The race of the ground-truth run, made certain: the rotation reads the user's cut, a
    revoke-all commits, then the rotation appends and the post-commit check refuses it."""
    real_view = service.store.family_and_cut

    async def read_then_revoke(sid: str) -> Any:
        view = await real_view(sid)
        assert view[0] is not None
        await service.revoke_user(
            RevokeUserRequest(sub=view[0].started.sub, reason=RevokeReason.PASSWORD_CHANGE)
        )
        service.store.family_and_cut = real_view  # type: ignore[method-assign]
        return view

    service.store.family_and_cut = read_then_revoke  # type: ignore[method-assign]
    service.heads.drop(token.split(".")[1])  # no rotation hint: the rotation reads first
    with pytest.raises(SessionRevokedError):
        await service.rotate(RotateRequest(refresh_token=token))


@pytest.fixture
async def raced(settings: Settings, store: EventStore) -> AsyncIterator[tuple[str, list[RecordedEvent]]]:
    """One session: two accepted rotations, one refused by a racing revoke-all, then a logout."""
    nc = await connect(settings.nats_url, "test-race")
    try:
        service = await build_service(settings, nc)
        pair = await service.start_session(StartSessionRequest(sub="kate", client_id="web"))
        token = pair.refresh_token
        for _ in range(2):
            token = (await service.rotate(RotateRequest(refresh_token=token))).refresh_token
        await race_a_rotation_with_revoke_all(service, token)
        await service.revoke_session(RevokeSessionRequest(sid=pair.sid))  # the family goes on after it
        yield pair.sid, await all_events(store)
    finally:
        await nc.drain()


async def test_rotations_the_ledger_refused_are_not_counted(
    raced: tuple[str, list[RecordedEvent]], settings: Settings, tmp_path: Path
) -> None:
    """Appended after a revoke-all, answered session_revoked: no figure may count it (it did)."""
    _, events = raced
    cut = next(r.seq for r in events if isinstance(r.event, UserSessionsRevoked))
    refused = [r for r in events if isinstance(r.event, TokenRotated) and r.seq > cut]
    assert len(refused) == 1 and refused[0].event.generation == 3  # the ledger did append it
    db = tmp_path / "race.duckdb"
    await catch_up(settings, db)
    session = rows(db, "SELECT * FROM sessions")[0]
    assert (session["rotations"], session["last_generation"], session["end_kind"]) == (2, 2, "user_revoked")
    # as of the refused rotation the session still has events to come: the other (slow) path
    at = refused[0].event.occurred_at.astimezone(UTC).replace(tzinfo=None)
    assert rows(db, f"SELECT rotations, last_generation FROM sessions_at(TIMESTAMP '{at}')") == [
        {"rotations": 2, "last_generation": 2}
    ]
    expiration = rows(db, "SELECT * FROM token_expiration WHERE client_id IS NULL")[0]
    assert (expiration["tokens_issued"], expiration["tokens_used"]) == (3, 2)
    usage = rows(db, "SELECT * FROM refresh_usage WHERE client_id IS NULL")[0]
    assert usage["rotations"] == 2
    days = session["duration_us"] / 86400e6
    assert usage["rotations_per_session_day"] == pytest.approx(2 / days)
    conn, _ = open_reader(db)
    with conn:
        summary = dict(build(conn, "summary", window(conn, None, None))[0].rows)
    assert (summary["rotations"], summary["tokens_issued"]) == (2, 3)
    assert summary["rotations_per_session_day"] == pytest.approx(2 / days)


async def test_the_sessions_projection_does_not_count_refused_rotations(
    raced: tuple[str, list[RecordedEvent]], settings: Settings
) -> None:
    """The pure fold and the live KV projection both: 2 rotations, the ledger's head kept."""
    sid, events = raced
    record = fold(events).records[session_key(sid)]
    assert isinstance(record, SessionRecord)
    assert record.rotations == 2 and record.head.type == "SessionRevoked"
    nc = await connect(settings.nats_url, "test-race-projection")
    stop = asyncio.Event()
    runner = SessionsRunner(nc, settings, options=RunnerOptions(batch=2, fetch_timeout=0.2))
    try:
        await runner.start()
        task = asyncio.create_task(runner.run(stop))
        deadline = time.monotonic() + 60
        while runner.applied < events[-1].seq and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 30)
        js = nc.jetstream()
        live = await (await SessionStore.open(js, await live_bucket(js, settings))).dump()
    finally:
        await nc.drain()
    assert decode(live[session_key(sid)]) == record


async def test_sign_out_others_keeps_the_current_session_alive_in_the_analytics(
    settings: Settings, store: EventStore, tmp_path: Path
) -> None:
    """One revoke-all that keeps the presenting session: analytics ended it too (keep_sid was
    ignored), and a version-3 file is folded again with the kept session alive."""
    nc = await connect(settings.nats_url, "test-keep")
    try:
        service = await build_service(settings, nc)
        pairs = [
            await service.start_session(StartSessionRequest(sub="lena", client_id="web")) for _ in range(3)
        ]
        here = pairs[0]
        await service.sign_out_others(SignOutOthersRequest(sub="lena", current_sid=here.sid))
        await service.rotate(RotateRequest(refresh_token=here.refresh_token))  # it lives on
    finally:
        await nc.drain()
    db = tmp_path / "keep.duckdb"
    await catch_up(settings, db)
    query = "SELECT sid, rotations, end_kind FROM sessions ORDER BY start_seq"
    expected = [
        {"sid": here.sid, "rotations": 1, "end_kind": None},
        *({"sid": p.sid, "rotations": 0, "end_kind": "user_revoked"} for p in pairs[1:]),
    ]
    assert rows(db, query) == expected
    conn = duckdb.connect(str(db))  # what a version-3 writer left: cuts without keep_sid
    conn.execute("UPDATE user_cuts SET keep_sid = NULL")
    conn.execute("UPDATE analytics_meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()
    AnalyticsDB(db, grace_window_s=settings.grace_window.total_seconds()).close()  # the writer opens it
    assert rows(db, query) == expected
