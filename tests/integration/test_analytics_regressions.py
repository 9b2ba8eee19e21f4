"""Analytics figures an independent ground-truth run found wrong (analytics issue, part 1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.receipts import Receipt, receipt_subject
from ledger.domain.errors import TokenReused
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from projections.analytics.db import AnalyticsDB, open_reader
from projections.analytics.projection import AnalyticsProjection
from projections.analytics.reports import build, window


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
