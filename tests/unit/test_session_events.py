"""Issue 14's pure pieces: event versions, the edge's "sign out others" rule, notices, the
sessions fold with devices and step-ups, the device table and the cap's decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from consumers.edge.state import Revocations
from ledger.contracts.notices import Notice, notice_for
from ledger.domain import decide
from ledger.domain.access import AccessClaims, KeyRing, RejectReason, TokenRejected
from ledger.domain.device import IpMode, device_class, ip_hint, minimise, ua_family
from ledger.domain.errors import SessionLimitReached
from ledger.domain.events import (
    AuthContext,
    DeviceInfo,
    RecordedEvent,
    RevokeReason,
    SessionStarted,
    SessionSteppedUp,
    TokenRotated,
    UserSessionsRevoked,
    decode_event,
    encode_event,
)
from projections.sessions.fold import (
    SessionRecord,
    UserCutRecord,
    decode,
    encode,
    fold,
    session_key,
    user_cut_key,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
SID, OTHER = "S" * 22, "T" * 22
HASH = "0" * 64

# Bytes as schema version 1 wrote them: must stay readable, with the v1 meaning.
V1_STARTED = (
    b'{"schema_version":1,"event_id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","occurred_at":"2026-01-01T00:00:00Z",'
    b'"sid":"SSSSSSSSSSSSSSSSSSSSSS","generation":0,"token_hash":"'
    + b"0"
    * 64
    + b'","type":"SessionStarted",'
    b'"sub":"alice","client_id":"web","scopes":["read"],"idle_ttl_s":60,"absolute_ttl_s":600}'
)
V1_USER_REVOKED = (
    b'{"schema_version":1,"event_id":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","occurred_at":"2026-01-01T00:00:00Z",'
    b'"type":"UserSessionsRevoked","sub":"alice","reason":"admin","not_before":"2026-01-01T00:00:00Z",'
    b'"requested_at":"2026-01-01T00:00:00Z"}'
)


def test_stored_v1_session_events_still_decode_with_their_v1_meaning() -> None:
    started = decode_event(V1_STARTED)
    assert isinstance(started, SessionStarted)
    assert (started.schema_version, started.auth, started.device) == (1, None, None)
    cut = decode_event(V1_USER_REVOKED)
    assert isinstance(cut, UserSessionsRevoked) and cut.keep_sid is None and cut.schema_version == 1


def test_new_events_are_v2_and_round_trip() -> None:
    auth = AuthContext(acr="aal2", amr=("pwd", "otp"), auth_time=NOW)
    event = SessionSteppedUp(
        event_id="c" * 32, occurred_at=NOW, sid=SID, generation=3, token_hash=HASH, sub="alice",
        auth=auth, rotated_at=NOW - timedelta(seconds=5),
    )  # fmt: skip
    assert decode_event(encode_event(event)) == event
    rotated = TokenRotated(event_id="d" * 32, occurred_at=NOW, sid=SID, generation=1, token_hash=HASH)
    assert rotated.schema_version == 2 and decode_event(encode_event(rotated)) == rotated


def claims(sid: str, ssq: int, sub: str = "alice") -> AccessClaims:
    return AccessClaims(sub=sub, sid=sid, jti="j", scopes=(), exp=0, nbf=0, iat=0, ssq=ssq, kid="k")


def user_notice(seq: int, keep: str | None, event_id: str) -> Notice:
    return Notice(kind="user", event_id=event_id, revoke_seq=seq, revoked_at=NOW, sub="alice", keep_sid=keep)


def rejected(state: Revocations, c: AccessClaims) -> str | None:
    try:
        state.check(c)
    except TokenRejected as err:
        return err.reason.value
    return None


def test_the_edge_applies_sign_out_others_as_a_revoke_all_with_one_exception() -> None:
    state, keys = Revocations(), KeyRing()
    state.apply(user_notice(10, SID, "e1"), keys, forget_at=1e12)
    assert rejected(state, claims(SID, ssq=5)) is None  # the kept session
    assert rejected(state, claims(OTHER, ssq=5)) == RejectReason.USER_REVOKED.value
    assert rejected(state, claims(OTHER, ssq=11)) is None  # started after the cut
    assert rejected(state, claims(OTHER, ssq=5, sub="bob")) is None
    state.apply(user_notice(8, None, "e0"), keys, forget_at=1e12)  # an older cut, late: changes nothing
    assert rejected(state, claims(SID, ssq=5)) is None
    state.apply(user_notice(20, None, "e2"), keys, forget_at=1e12)  # a later plain revoke-all
    assert rejected(state, claims(SID, ssq=5)) == RejectReason.USER_REVOKED.value
    state.prune(2e12)
    assert not state.users and not state.kept


def test_notice_carries_keep_sid() -> None:
    event = UserSessionsRevoked(
        event_id="f" * 32, occurred_at=NOW, sub="alice", reason=RevokeReason.USER_REQUEST,
        not_before=NOW, requested_at=NOW, keep_sid=SID,
    )  # fmt: skip
    notice = notice_for(RecordedEvent(event, 9, "ledger.ev.u._YWxpY2U.revoked"))
    assert notice is not None and notice.keep_sid == SID and notice.kind == "user"


def started(sid: str, **extra: Any) -> SessionStarted:
    return SessionStarted(
        event_id=f"{ord(sid[0]):032x}", occurred_at=NOW, sid=sid, generation=0, token_hash=HASH, sub="alice",
        idle_ttl_s=3600, absolute_ttl_s=86400, **extra,
    )  # fmt: skip


def test_the_fold_keeps_device_last_seen_step_up_and_the_kept_session() -> None:
    phone = DeviceInfo(device_class="mobile", label="phone")
    laptop = DeviceInfo(device_class="desktop", label="laptop")
    later = NOW + timedelta(minutes=5)
    events = [
        started(SID, device=phone, auth=AuthContext(acr="aal1")),
        started(OTHER),
        TokenRotated(
            event_id="1" * 32, occurred_at=later, sid=SID, generation=1, token_hash=HASH, device=laptop
        ),
        SessionSteppedUp(
            event_id="2" * 32, occurred_at=later, sid=SID, generation=1, token_hash=HASH, sub="alice",
            auth=AuthContext(acr="aal2"), rotated_at=later,
        ),
        UserSessionsRevoked(
            event_id="3" * 32, occurred_at=later, sub="alice", reason=RevokeReason.USER_REQUEST,
            not_before=later, requested_at=later, keep_sid=SID,
        ),
    ]  # fmt: skip
    state = fold(RecordedEvent(e, i + 1, "s") for i, e in enumerate(events))
    record = state.records[session_key(SID)]
    assert isinstance(record, SessionRecord)
    assert (record.device, record.last_seen_at, record.family().auth) == (
        laptop,
        later,
        AuthContext(acr="aal2"),
    )
    cut = state.records[user_cut_key("alice")]
    assert isinstance(cut, UserCutRecord) and cut.cut_for(SID) is None and cut.cut_for(OTHER) == 5
    assert decode(encode(record)) == record


def test_records_that_never_used_the_new_fields_keep_their_bytes() -> None:
    record = SessionRecord(
        seq=1, started=decode_event(V1_STARTED), start_seq=1, head=decode_event(V1_STARTED)
    )  # type: ignore[arg-type]
    raw = encode(record)
    for later_field in (b'"auth"', b'"device"', b'"last_device"'):
        assert later_field not in raw
    assert decode(raw) == record


@pytest.mark.parametrize(
    ("ua", "cls", "family"),
    [
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36 Edg/126.0",
         "desktop", "Edge on Windows"),
        ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile Safari/537.36",
         "mobile", "Chrome on Android"),
        ("Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Safari/604.1",
         "tablet", "Safari on iPadOS"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Gecko/20100101 Firefox/127.0",
         "desktop", "Firefox on macOS"),
        ("Googlebot/2.1 (+http://www.google.com/bot.html)", "bot", None),
        ("curl/8.5.0", "bot", "curl"),
        ("\x00\x01" + "x" * 5000, "other", None),
    ],
)  # fmt: skip
def test_the_device_table_bounds_what_a_user_agent_becomes(ua: str, cls: str, family: str | None) -> None:
    assert (device_class(ua), ua_family(ua)) == (cls, family)


def test_ip_hints() -> None:
    key = b"k" * 32
    assert ip_hint("203.0.113.77", IpMode.TRUNCATE, key) == "203.0.113.0/24"
    assert ip_hint("2001:db8:1:2::3", IpMode.TRUNCATE, key) == "2001:db8:1::/48"
    hashed = ip_hint("203.0.113.77", IpMode.HASH, key)
    assert hashed == ip_hint("203.0.113.77", IpMode.HASH, key) != ip_hint("203.0.113.78", IpMode.HASH, key)
    assert hashed != ip_hint("203.0.113.77", IpMode.HASH, b"j" * 32)  # keyed: another key, another hint
    assert ip_hint("203.0.113.77", IpMode.OFF, key) is None
    assert minimise(user_agent=None, ip=None, label=None, mode=IpMode.RAW, key=key) is None


def test_admit_evicts_the_oldest_or_refuses() -> None:
    live = [("c" * 22, 30), ("a" * 22, 10), ("b" * 22, 20)]
    kwargs: dict[str, Any] = {"sub": "alice", "sid": "n" * 22, "now": NOW, "event_id": "e" * 32}
    admission = decide.admit(live=live, limit=2, policy=decide.LimitPolicy.EVICT_OLDEST, **kwargs)
    assert admission.evict == ("a" * 22, "b" * 22) and admission.event.live == ("c" * 22, "n" * 22)
    assert decide.admit(live=live, limit=5, policy=decide.LimitPolicy.REFUSE, **kwargs).evict == ()
    with pytest.raises(SessionLimitReached):
        decide.admit(live=live, limit=3, policy=decide.LimitPolicy.REFUSE, **kwargs)
