"""Issue 14 on the in-memory store: authentication context through rotation, step-up,
idempotent start, minimised device context, self-service and the per-user session cap."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from ledger.contracts.commands import (
    ClientContext,
    RevokeOwnSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    SignOutOthersRequest,
    StartSessionRequest,
    StepUpRequest,
    parse_request,
)
from ledger.domain import decide
from ledger.domain.errors import (
    BadRequest,
    IdempotencyKeyReused,
    SessionLimitReached,
    SessionNotFound,
    SessionRevokedError,
    TokenReused,
    Unavailable,
)
from ledger.domain.events import Event, RevokeReason, SessionAdmitted, SessionRevoked, UserSessionsRevoked
from ledger.eventstore import MemoryEventStore
from ledger.service.handlers import LedgerService
from ledger.service.signer import AccessTokenSigner
from tests.support.memory_service import make

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
AUTH_TIME = datetime(2026, 6, 1, 11, 59, tzinfo=UTC)


def claims(signer: AccessTokenSigner, token: str) -> dict[str, Any]:
    key = signer.key.private.public_key()  # type: ignore[union-attr]
    times = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}  # the test clock is not now
    return jwt.decode(token, key, algorithms=["ES256"], audience="a", options=times)  # type: ignore[no-any-return,arg-type]


def auth_of(c: dict[str, Any]) -> tuple[Any, Any, Any]:
    return c.get("acr"), c.get("amr"), c.get("auth_time")


def of_type(store: MemoryEventStore, kind: type[Event]) -> list[Any]:  # type: ignore[valid-type]
    return [rec.event for rec in store.records if isinstance(rec.event, kind)]


def start(sub: str = "alice", **fields: Any) -> StartSessionRequest:
    return StartSessionRequest(sub=sub, **fields)


# -- 1. authentication context ----------------------------------------------------------------


async def test_acr_amr_auth_time_survive_a_hundred_rotations_unchanged(signer: AccessTokenSigner) -> None:
    service, _, clock = make(signer)
    pair = await service.start_session(start(acr="urn:acr:mfa", amr=("pwd", "otp"), auth_time=AUTH_TIME))
    want = ("urn:acr:mfa", ["pwd", "otp"], int(AUTH_TIME.timestamp()))
    assert auth_of(claims(signer, pair.access_token)) == want
    for _ in range(100):
        clock.advance(1)
        pair = await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
        assert auth_of(claims(signer, pair.access_token)) == want
    assert pair.generation == 100


async def test_a_session_without_auth_context_has_no_such_claims(signer: AccessTokenSigner) -> None:
    service, _, _ = make(signer)
    pair = await service.start_session(start())
    assert auth_of(claims(signer, pair.access_token)) == (None, None, None)


async def test_step_up_raises_acr_for_the_familys_next_tokens_only(signer: AccessTokenSigner) -> None:
    service, store, clock = make(signer)
    pair = await service.start_session(start(acr="aal1", amr=("pwd",), auth_time=AUTH_TIME))
    before = await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    clock.advance(60)
    stepped_at = clock.now
    req = StepUpRequest(sid=pair.sid, sub="alice", acr="aal2", amr=("pwd", "hwk"), auth_time=stepped_at)
    ack = await service.step_up(req)
    assert ack.acr == "aal2" and ack.seq == len(store.records)
    assert claims(signer, before.access_token)["acr"] == "aal1"  # issued tokens keep what they say
    nxt = before
    for _ in range(5):  # the raised level travels through every later rotation
        clock.advance(1)
        nxt = await service.rotate(RotateRequest(refresh_token=nxt.refresh_token))
        assert auth_of(claims(signer, nxt.access_token)) == (
            "aal2",
            ["pwd", "hwk"],
            int(stepped_at.timestamp()),
        )
    other = await service.start_session(start(acr="aal1"))
    assert claims(signer, other.access_token)["acr"] == "aal1"  # another family: unchanged


async def test_step_up_does_not_reopen_the_grace_window_of_the_superseded_token(
    signer: AccessTokenSigner,
) -> None:
    service, _, clock = make(signer, grace_window=timedelta(seconds=30))
    pair = await service.start_session(start(acr="aal1"))
    await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    clock.advance(25)
    await service.step_up(StepUpRequest(sid=pair.sid, sub="alice", acr="aal2"))
    clock.advance(10)  # 35 s after the rotation, 10 s after the step-up: reuse, not a retry
    with pytest.raises(TokenReused):
        await service.rotate(RotateRequest(refresh_token=pair.refresh_token))


async def test_step_up_is_refused_for_another_user_a_revoked_session_or_a_future_auth_time(
    signer: AccessTokenSigner,
) -> None:
    service, store, clock = make(signer)
    pair = await service.start_session(start())
    before = len(store.records)
    with pytest.raises(SessionNotFound):
        await service.step_up(StepUpRequest(sid=pair.sid, sub="mallory", acr="aal3"))
    with pytest.raises(BadRequest):
        future = clock.now + timedelta(hours=1)
        await service.step_up(StepUpRequest(sid=pair.sid, sub="alice", acr="aal3", auth_time=future))
    await service.revoke_user(RevokeUserRequest(sub="alice"))
    with pytest.raises(SessionRevokedError):
        await service.step_up(StepUpRequest(sid=pair.sid, sub="alice", acr="aal3"))
    assert len(store.records) == before + 1  # only the revoke-all


# -- 2. idempotent start ----------------------------------------------------------------------


async def test_the_same_idempotency_key_returns_the_same_session(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    first = await service.start_session(start(idempotency_key="login-0001"))
    again = await service.start_session(start(idempotency_key="login-0001"))
    other = await service.start_session(start(idempotency_key="login-0002"))
    bob = await service.start_session(start("bob", idempotency_key="login-0001"))  # keys are per user
    assert again.sid == first.sid and again.refresh_token == first.refresh_token
    assert len({first.sid, other.sid, bob.sid}) == 3
    assert [type(r.event).__name__ for r in store.records] == ["SessionStarted"] * 3


async def test_concurrent_retries_of_one_idempotent_start_make_one_session(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    pairs = await asyncio.gather(*(service.start_session(start(idempotency_key="k" * 40)) for _ in range(20)))
    assert len({p.sid for p in pairs}) == 1 and len({p.refresh_token for p in pairs}) == 1
    assert len(store.records) == 1


async def test_an_idempotency_key_is_not_a_second_way_to_a_session(signer: AccessTokenSigner) -> None:
    service, _, _ = make(signer)
    first = await service.start_session(start(client_id="web", idempotency_key="login-0001"))
    with pytest.raises(IdempotencyKeyReused):  # other parameters under the same key
        await service.start_session(start(client_id="ios", idempotency_key="login-0001"))
    await service.rotate(RotateRequest(refresh_token=first.refresh_token))
    with pytest.raises(IdempotencyKeyReused):  # the session moved on: generation 0 would be reuse
        await service.start_session(start(client_id="web", idempotency_key="login-0001"))


# -- 3. device context ------------------------------------------------------------------------


async def test_device_context_is_minimised_and_the_raw_ip_never_stored(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    ctx = ClientContext(user_agent=UA, ip="203.0.113.77", label="Alice's laptop")
    pair = await service.start_session(start(client=ctx))
    await service.rotate(
        RotateRequest(refresh_token=pair.refresh_token, client=ClientContext(ip="2001:db8:abcd:12::9"))
    )
    raw = b"".join(r.event.model_dump_json().encode() for r in store.records)
    for secret in (b"203.0.113.77", b"2001:db8:abcd:12::9", b"Gecko", b"rv:128"):
        assert secret not in raw
    started, rotated = (r.event for r in store.records)
    assert started.device.model_dump() == {
        "device_class": "desktop", "ua_family": "Firefox on Linux", "label": "Alice's laptop",
        "ip_hint": "203.0.113.0/24",
    }  # fmt: skip
    assert rotated.device.ip_hint == "2001:db8:abcd::/48"


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("truncate", lambda h: h == "198.51.100.0/24"),
        ("hash", lambda h: h.startswith("h:") and len(h) == 18 and "198" not in h),
        ("raw", lambda h: h == "198.51.100.23"),
        ("off", lambda h: h is None),
    ],
)
async def test_the_operator_chooses_what_is_kept_of_an_ip(
    signer: AccessTokenSigner, mode: str, check: Any
) -> None:
    service, store, _ = make(signer, client_ip=mode)
    await service.start_session(start(client=ClientContext(ip="198.51.100.23")))
    assert check(store.records[0].event.device.ip_hint)


@pytest.mark.parametrize(
    "client",
    [
        {"user_agent": "x" * 1025},
        {"ip": "203.0.113.300"},
        {"ip": "not an ip"},
        {"label": "x" * 65},
        {"label": "evil\u202elabel"},
        {"label": "line\nbreak"},
        {"label": "   "},
        {"extra": "field"},
    ],
)
def test_client_context_input_is_bounded(client: dict[str, Any]) -> None:
    import json

    body = json.dumps({"sub": "alice", "client": client}).encode()
    with pytest.raises(BadRequest) as err:
        parse_request(StartSessionRequest, body)
    assert "client" in err.value.message and "203.0.113.300" not in err.value.message


@pytest.mark.parametrize(
    "fields",
    [
        {"acr": "a b"},
        {"acr": "x" * 129},
        {"amr": ["pwd"] * 9},
        {"amr": ["p w d"]},
        {"idempotency_key": "short"},
    ],
)
def test_auth_and_idempotency_input_is_bounded(fields: dict[str, Any]) -> None:
    import json

    with pytest.raises(BadRequest):
        parse_request(StartSessionRequest, json.dumps({"sub": "alice", **fields}).encode())


# -- 4. self-service --------------------------------------------------------------------------


async def test_sign_out_others_keeps_only_the_current_session(signer: AccessTokenSigner) -> None:
    service, store, clock = make(signer)
    laptop, phone, tablet = [await service.start_session(start()) for _ in range(3)]
    bob = await service.start_session(start("bob"))
    ack = await service.sign_out_others(SignOutOthersRequest(sub="alice", current_sid=phone.sid))
    assert ack.kept_sid == phone.sid and ack.seq == len(store.records)
    (event,) = of_type(store, UserSessionsRevoked)
    assert event.keep_sid == phone.sid and event.reason is RevokeReason.USER_REQUEST
    for other in (laptop, tablet):
        with pytest.raises(SessionRevokedError):
            await service.rotate(RotateRequest(refresh_token=other.refresh_token))
    current = phone
    for _ in range(3):
        clock.advance(1)
        current = await service.rotate(RotateRequest(refresh_token=current.refresh_token))
    await service.rotate(RotateRequest(refresh_token=bob.refresh_token))
    later = await service.start_session(start())  # a new login after the cut is not affected
    await service.rotate(RotateRequest(refresh_token=later.refresh_token))


async def test_sign_out_others_from_a_dead_or_foreign_session_changes_nothing(
    signer: AccessTokenSigner,
) -> None:
    service, store, _ = make(signer)
    mine, other = await service.start_session(start()), await service.start_session(start())
    bobs = await service.start_session(start("bob"))
    await service.revoke_own(RevokeOwnSessionRequest(sub="alice", current_sid=other.sid, sid=mine.sid))
    before = len(store.records)
    with pytest.raises(SessionRevokedError):
        await service.sign_out_others(SignOutOthersRequest(sub="alice", current_sid=mine.sid))
    with pytest.raises(SessionNotFound):
        await service.sign_out_others(SignOutOthersRequest(sub="alice", current_sid=bobs.sid))
    assert len(store.records) == before


async def test_a_revoke_all_racing_a_sign_out_others_wins(signer: AccessTokenSigner) -> None:
    """The sign-out's compare-and-set on the user's events sees the revoke-all and re-reads:
    the 'kept' session must not survive a revoke-all that landed after it was read."""
    service, store, _ = make(signer)
    current = await service.start_session(start())
    original = store.append

    async def revoke_all_first(subject: str, event: Event, *, expect: tuple[str, int] | None = None) -> int:  # type: ignore[valid-type]
        if isinstance(event, UserSessionsRevoked) and event.keep_sid is not None:
            store.append = original  # type: ignore[method-assign]
            await service.revoke_user(RevokeUserRequest(sub="alice"))
        return await original(subject, event, expect=expect)

    store.append = revoke_all_first  # type: ignore[method-assign]
    with pytest.raises(SessionRevokedError):
        await service.sign_out_others(SignOutOthersRequest(sub="alice", current_sid=current.sid))
    assert [e.keep_sid for e in of_type(store, UserSessionsRevoked)] == [None]
    with pytest.raises(SessionRevokedError):
        await service.rotate(RotateRequest(refresh_token=current.refresh_token))


async def test_revoke_own_session_only_within_the_same_user(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    a, b = await service.start_session(start()), await service.start_session(start())
    bobs = await service.start_session(start("bob"))
    with pytest.raises(SessionNotFound):  # bob's session looks like an unknown one to alice
        await service.revoke_own(RevokeOwnSessionRequest(sub="alice", current_sid=a.sid, sid=bobs.sid))
    with pytest.raises(SessionNotFound):
        await service.revoke_own(RevokeOwnSessionRequest(sub="bob", current_sid=a.sid, sid=b.sid))
    assert not of_type(store, SessionRevoked)
    ack = await service.revoke_own(RevokeOwnSessionRequest(sub="alice", current_sid=a.sid, sid=b.sid))
    assert ack.sid == b.sid and of_type(store, SessionRevoked)[0].reason is RevokeReason.USER_REQUEST
    await service.rotate(RotateRequest(refresh_token=a.refresh_token))


# -- 5. session cap ---------------------------------------------------------------------------


async def alive(service: LedgerService, store: MemoryEventStore, sub: str = "alice") -> set[str]:
    sids = {
        r.event.sid
        for r in store.records
        if type(r.event).__name__ == "SessionStarted" and r.event.sub == sub
    }
    out = set()
    for sid in sids:
        family, cut = await service._read(sid)
        try:
            assert family is not None
            decide.check_alive(family, cut, service.clock())
        except (SessionRevokedError, AssertionError):
            continue
        out.add(sid)
    return out


@pytest.mark.parametrize("policy", ["evict_oldest", "refuse"])
async def test_twenty_concurrent_starts_with_cap_five_leave_five_live_sessions(
    signer: AccessTokenSigner, policy: str
) -> None:
    service, store, _ = make(signer, max_sessions_per_user=5, session_limit_policy=policy)
    results = await asyncio.gather(
        *(service.start_session(start()) for _ in range(20)), return_exceptions=True
    )
    answered = [r.sid for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    live = await alive(service, store)
    assert len(live) == 5
    if policy == "refuse":
        assert len(answered) == 5 and set(answered) == live
        assert all(isinstance(r, SessionLimitReached) for r in refused) and len(refused) == 15
    else:
        assert len(answered) == 20 and not refused
    revoked = of_type(store, SessionRevoked)
    assert len(revoked) == 15 and {e.reason for e in revoked} == {RevokeReason.SESSION_LIMIT}
    assert of_type(store, SessionAdmitted)[-1].live and set(of_type(store, SessionAdmitted)[-1].live) >= live


async def test_evict_oldest_evicts_by_start_order_and_other_users_are_untouched(
    signer: AccessTokenSigner,
) -> None:
    service, store, _ = make(signer, max_sessions_per_user=2)
    bob = await service.start_session(start("bob"))
    first, second, third = [await service.start_session(start()) for _ in range(3)]
    with pytest.raises(SessionRevokedError):
        await service.rotate(RotateRequest(refresh_token=first.refresh_token))
    for pair in (second, third, bob):
        await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    assert of_type(store, SessionAdmitted)[-1].evicted == (first.sid,)


async def test_sessions_that_ended_free_their_slot(signer: AccessTokenSigner) -> None:
    service, _, clock = make(signer, max_sessions_per_user=2, session_limit_policy="refuse")
    a = await service.start_session(start())
    await service.start_session(start())
    with pytest.raises(SessionLimitReached):
        await service.start_session(start())
    await service.revoke_own(RevokeOwnSessionRequest(sub="alice", current_sid=a.sid, sid=a.sid))
    await service.start_session(start())
    await service.revoke_user(RevokeUserRequest(sub="alice"))
    await service.start_session(start())
    await service.start_session(start())
    clock.advance(8 * 86400)  # both idle-expired
    await service.start_session(start())


async def test_an_idempotent_retry_under_a_cap_is_admitted_once(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer, max_sessions_per_user=1, session_limit_policy="refuse")
    one = await service.start_session(start(idempotency_key="login-0001"))
    again = await service.start_session(start(idempotency_key="login-0001"))
    assert one.sid == again.sid and len(of_type(store, SessionAdmitted)) == 1
    with pytest.raises(SessionLimitReached):
        await service.start_session(start(idempotency_key="login-0002"))
    with pytest.raises(SessionLimitReached):  # its retry gets the same answer
        await service.start_session(start(idempotency_key="login-0002"))


async def test_endless_admission_contention_is_unavailable(
    signer: AccessTokenSigner, monkeypatch: Any
) -> None:
    service, _, _ = make(signer, max_sessions_per_user=3)
    monkeypatch.setattr("ledger.service.limits.MAX_ADMIT_ATTEMPTS", 3)

    async def lose(*args: Any) -> bool:
        return False

    monkeypatch.setattr(service.limiter, "_try_admit", lose)
    with pytest.raises(Unavailable):
        await service.start_session(start())


@pytest.mark.parametrize("rotating", ["kept", "other"])
async def test_a_sign_out_others_racing_a_rotation_is_ordered(
    signer: AccessTokenSigner, rotating: str
) -> None:
    """Invariant 8 with an exception: a rotation that read before the sign-out and committed
    after it is refused for the other sessions, and goes through for the kept one."""
    service, store, _ = make(signer)
    kept, other = await service.start_session(start()), await service.start_session(start())
    pair = kept if rotating == "kept" else other
    original = store.append

    async def sign_out_first(subject: str, event: Event, *, expect: tuple[str, int] | None = None) -> int:  # type: ignore[valid-type]
        if type(event).__name__ == "TokenRotated":
            store.append = original  # type: ignore[method-assign]
            await service.sign_out_others(SignOutOthersRequest(sub="alice", current_sid=kept.sid))
        return await original(subject, event, expect=expect)

    store.append = sign_out_first  # type: ignore[method-assign]
    if rotating == "kept":
        assert (await service.rotate(RotateRequest(refresh_token=pair.refresh_token))).generation == 1
    else:
        with pytest.raises(SessionRevokedError):
            await service.rotate(RotateRequest(refresh_token=pair.refresh_token))


async def test_a_per_client_cap_counts_each_client_apart(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer, max_sessions_per_user=2, session_limit_scope="client")
    web = [await service.start_session(start(client_id="web")) for _ in range(3)]
    ios = [await service.start_session(start(client_id="ios")) for _ in range(2)]
    with pytest.raises(SessionRevokedError):  # the oldest web session made room for the third
        await service.rotate(RotateRequest(refresh_token=web[0].refresh_token))
    for pair in (*web[1:], *ios):  # the phone's sessions were not counted against the web's
        await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    assert [e.evicted for e in of_type(store, SessionAdmitted)] == [(), (), (web[0].sid,), (), ()]
    assert len(of_type(store, SessionAdmitted)[-1].live) == 4
