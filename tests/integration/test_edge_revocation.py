"""Revocations reach a running edge verifier within milliseconds, and a verifier started
later learns them too; other sessions keep passing. Real nats-server, ledger service,
broadcaster and verifiers; delays are measured and printed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger.client import LedgerClient
from ledger.contracts.subjects import RECEIPTS_STREAM
from ledger.domain.errors import TokenReused
from ledger.domain.events import SigningKeyAdded, SigningKeyRetired
from ledger.domain.ids import new_event_id
from ledger.domain.keys import added_statement, retired_statement
from ledger.service.keys import SigningKey, generate, key_id, sign_statement
from ledger.streaming.store import EventStore
from tests.support.edge import (
    broadcaster,
    claims_for,
    reason_of,
    report,
    service_key,
    sign,
    until_rejected,
    verifier,
)


async def receipts_for(store: EventStore, revoke_seq: int, limit: float = 5.0) -> list[dict[str, Any]]:
    """Receipts the verifiers published for one revocation (waits until at least one)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = []
        sub = await store.js.subscribe("ledger.receipt.>", stream=RECEIPTS_STREAM, ordered_consumer=True)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.3)
                except TimeoutError:
                    break
                body = json.loads(msg.data)
                if body["revoke_seq"] == revoke_seq:
                    found.append(body)
        finally:
            await sub.unsubscribe()
        if found:
            return found
        await asyncio.sleep(0.1)
    return []


async def test_revoke_session_rejected_live_and_by_a_late_verifier(
    client: LedgerClient, store: EventStore, settings: Any, capsys: Any
) -> None:
    a = await client.start_session("alice", scopes=["read"])
    b = await client.start_session("bob", scopes=["read"])
    async with broadcaster(settings), verifier(settings, verifier_id="edge-live") as v:
        assert v.verify(a.access_token).sid == a.sid
        assert v.verify(b.access_token).sub == "bob"
        t0 = time.monotonic()
        revocation = await client.revoke_session(a.sid)
        acked = time.monotonic()
        rejected, reason = await until_rejected(v, a.access_token)
        assert reason == "session_revoked"
        report(
            capsys,
            f"session revoke->reject {1000 * (rejected - t0):.1f} ms "
            f"(after the revoke ack {1000 * (rejected - acked):.1f} ms)",
        )
        assert v.verify(b.access_token).sid == b.sid
        receipts = await receipts_for(store, revocation.seq or -1)
        assert [(r["verifier"], r["kind"], r["sid"]) for r in receipts] == [("edge-live", "session", a.sid)]
        async with verifier(settings, verifier_id="edge-late") as late:
            assert reason_of(late, a.access_token) == "session_revoked"
            assert late.verify(b.access_token).sid == b.sid


async def test_revoke_user_kills_older_sessions_only(
    client: LedgerClient, settings: Any, capsys: Any
) -> None:
    a1 = await client.start_session("carol")
    a2 = await client.start_session("carol")
    other = await client.start_session("dave")
    async with broadcaster(settings), verifier(settings) as v:
        t0 = time.monotonic()
        await client.revoke_user("carol")
        first, reason = await until_rejected(v, a1.access_token)
        assert reason == "user_revoked"
        assert reason_of(v, a2.access_token) == "user_revoked"
        report(capsys, f"user revoke->reject {1000 * (first - t0):.1f} ms")
        after = await client.start_session("carol")  # a session started after the cut lives
        assert v.verify(after.access_token).sub == "carol"
        assert v.verify(other.access_token).sub == "dave"
        async with verifier(settings) as late:
            assert reason_of(late, a2.access_token) == "user_revoked"
            assert late.verify(after.access_token).sid == after.sid


async def test_retired_key_rejected_other_key_passes(
    client: LedgerClient, store: EventStore, settings: Any, capsys: Any
) -> None:
    pair = await client.start_session("erin")
    old = service_key(settings)
    new = SigningKey("", "ES256", generate("ES256"))
    new = SigningKey(key_id(new.public), "ES256", new.private)
    now = datetime.now(UTC)
    proof = sign_statement(added_statement(new.kid, "ES256", new.public_jwk(), None), old)  # by the old key
    added = SigningKeyAdded(
        event_id=new_event_id(),
        occurred_at=now,
        kid=new.kid,
        alg="ES256",
        public_jwk=new.public_jwk(),
        proof=proof,
    )
    await store.append(store.subjects.key(new.kid, "added"), added)
    async with broadcaster(settings), verifier(settings) as v:
        fresh = sign(new, claims_for(settings, sub="erin"))
        assert v.verify(fresh).kid == new.kid
        assert v.verify(pair.access_token).kid == old.kid
        retirement = sign_statement(retired_statement(old.kid), new)
        retired = SigningKeyRetired(event_id=new_event_id(), occurred_at=now, kid=old.kid, proof=retirement)
        t0 = time.monotonic()
        await store.append(store.subjects.key(old.kid, "retired"), retired)
        first, reason = await until_rejected(v, pair.access_token)
        assert reason == "key_retired"
        report(capsys, f"key retire->reject {1000 * (first - t0):.1f} ms")
        assert v.verify(fresh).sub == "erin"
        async with verifier(settings) as late:
            assert reason_of(late, pair.access_token) == "key_retired"
            assert late.verify(fresh).kid == new.kid


async def test_reuse_rejects_the_whole_family_at_the_edge(
    services: Any, settings_for: Any, capsys: Any
) -> None:
    settings = settings_for(grace_window=timedelta(0))
    await services.start(settings)
    async with await LedgerClient.connect(settings.nats_url) as client:
        first = await client.start_session("frank")
        second = await client.rotate(first.refresh_token)
        bystander = await client.start_session("frank")
        async with broadcaster(settings), verifier(settings) as v:
            assert v.verify(first.access_token).sid == v.verify(second.access_token).sid
            t0 = time.monotonic()
            with pytest.raises(TokenReused):
                await client.rotate(first.refresh_token)  # replay of a superseded token
            rejected, reason = await until_rejected(v, second.access_token)
            assert reason == "session_revoked"
            assert reason_of(v, first.access_token) == "session_revoked"
            report(capsys, f"reuse->reject {1000 * (rejected - t0):.1f} ms (incl. the rotate round trip)")
            assert v.verify(bystander.access_token).sid == bystander.sid


async def test_readme_edge_example_runs(client: LedgerClient, settings: Any) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "EdgeVerifier" in b]
    namespace: dict[str, Any] = {"__name__": "readme_edge"}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    pair = await client.start_session("olga")
    assert await namespace["check"](settings.nats_url, pair.access_token) == "olga"
    assert await namespace["check"](settings.nats_url, "not-a-token") == "rejected: malformed"
