"""Pure parts of edge verification: notice derivation and lifetime, the revocation state,
the warm cache that never skips the revocation check. No NATS."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.edge.state import Revocations
from ledger.contracts.notices import (
    CLOCK_LEEWAY,
    Notice,
    decode_notice,
    notice_for,
    notice_subject,
    notice_ttl,
)
from ledger.contracts.receipts import Receipt, receipt_subject
from ledger.domain.access import AccessClaims, KeyRing, RejectReason, TokenRejected, check_times
from ledger.domain.events import (
    RecordedEvent,
    ReuseDetected,
    RevokeReason,
    SessionRevoked,
    SigningKeyRetired,
    TokenRotated,
    UserSessionsRevoked,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SID = "S" * 22
HASH = "0" * 64


def rec(event: Any, seq: int = 42) -> RecordedEvent:
    return RecordedEvent(event=event, seq=seq, subject="ledger.ev.x")


def eid(n: int) -> str:
    return f"{n:032x}"


def claims(**kw: Any) -> AccessClaims:
    base: dict[str, Any] = dict(
        sub="u", sid=SID, jti="j", scopes=(), exp=2_000, nbf=1_000, iat=1_000, ssq=10, kid="k"
    )
    base.update(kw)
    return AccessClaims(**base)


def test_notice_for_each_revoking_event_and_nothing_else() -> None:
    common = dict(occurred_at=NOW, sid=SID, generation=1, token_hash=HASH)
    revoked = SessionRevoked(event_id=eid(1), sub="u", reason=RevokeReason.LOGOUT, requested_at=NOW, **common)
    reuse = ReuseDetected(event_id=eid(2), sub="u", presented_generation=0, **common)
    user = UserSessionsRevoked(
        event_id=eid(3),
        occurred_at=NOW,
        sub="a.b c",
        reason=RevokeReason.ADMIN,
        not_before=NOW,
        requested_at=NOW,
    )
    key = SigningKeyRetired(event_id=eid(4), occurred_at=NOW, kid="kid1")
    assert notice_for(rec(revoked)) == Notice(
        kind="session", event_id=eid(1), revoke_seq=42, revoked_at=NOW, sid=SID, sub="u"
    )
    assert notice_for(rec(reuse, 7)) == Notice(
        kind="session", event_id=eid(2), revoke_seq=7, revoked_at=NOW, sid=SID, sub="u"
    )
    user_notice = notice_for(rec(user))
    assert user_notice is not None and user_notice.kind == "user" and user_notice.sub == "a.b c"
    assert notice_subject(user_notice).startswith("ledger.revoked.user._")  # sub encoded: no '.' or ' '
    assert notice_subject(user_notice).count(".") == 3
    key_notice = notice_for(rec(key))
    assert key_notice is not None and notice_subject(key_notice) == "ledger.revoked.key.kid1"
    assert notice_for(rec(TokenRotated(event_id=eid(5), **common))) is None
    assert decode_notice(user_notice.encode()) == user_notice


def test_notice_ttl_counts_from_the_revocation_not_from_a_late_publish() -> None:
    notice = Notice(kind="session", event_id=eid(1), revoke_seq=1, revoked_at=NOW, sid=SID)
    access = timedelta(minutes=15)
    full = notice_ttl(notice, access, now=NOW)
    assert access + CLOCK_LEEWAY <= full <= access + CLOCK_LEEWAY + timedelta(seconds=1)
    late = notice_ttl(notice, access, now=NOW + timedelta(minutes=10))
    assert timedelta(minutes=6) <= late <= timedelta(minutes=6, seconds=1)
    assert notice_ttl(notice, access, now=NOW + timedelta(days=1)) == timedelta(seconds=1)


def test_revocations_are_idempotent_and_o1() -> None:
    state, keys = Revocations(), KeyRing()
    session = Notice(kind="session", event_id=eid(1), revoke_seq=5, revoked_at=NOW, sid=SID)
    assert state.apply(session, keys, forget_at=100.0) is True
    assert state.apply(session, keys, forget_at=100.0) is False  # redelivery: no second receipt
    with pytest.raises(TokenRejected) as err:
        state.check(claims())
    assert err.value.reason is RejectReason.SESSION_REVOKED
    cut = Notice(kind="user", event_id=eid(2), revoke_seq=10, revoked_at=NOW, sub="v")
    state.apply(cut, keys, forget_at=100.0)
    state.check(claims(sid="T" * 22, sub="v", ssq=10))  # started at the cut's seq or after: alive
    with pytest.raises(TokenRejected) as err:
        state.check(claims(sid="T" * 22, sub="v", ssq=9))
    assert err.value.reason is RejectReason.USER_REVOKED
    older = Notice(kind="user", event_id=eid(3), revoke_seq=3, revoked_at=NOW, sub="v")
    state.apply(older, keys, forget_at=100.0)  # out of order: the cut never moves back
    assert state.users["v"][0] == 10
    state.apply(Notice(kind="key", event_id=eid(4), revoke_seq=11, revoked_at=NOW, kid="k"), keys, 100.0)
    assert "k" in keys.retired
    assert state.prune(now=101.0) == 6 and state.counts() == {"sessions": 0, "users": 0, "jtis": 0}


def test_times_rechecked_for_cached_tokens() -> None:
    check_times(claims(), now=1_500, leeway=10)
    check_times(claims(), now=2_009, leeway=10)
    with pytest.raises(TokenRejected, match="expired"):
        check_times(claims(), now=2_010, leeway=10)
    with pytest.raises(TokenRejected, match="not_yet_valid"):
        check_times(claims(), now=989, leeway=10)


def test_receipt_wire_format_is_the_shared_contract() -> None:
    receipt = Receipt(
        verifier="edge-a",
        event_id=eid(9),
        revoke_seq=12,
        kind="user",
        sid=None,
        sub="u",
        kid=None,
        applied_at=datetime.fromtimestamp(time.time(), UTC),
    )
    import json

    body = json.loads(receipt.encode())
    assert set(body) == {"verifier", "event_id", "revoke_seq", "kind", "sid", "sub", "kid", "applied_at"}
    assert body["applied_at"].endswith("+00:00")
    assert receipt_subject("edge-a") == "ledger.receipt.edge-a"
    with pytest.raises(ValueError):
        receipt_subject("a.b")
