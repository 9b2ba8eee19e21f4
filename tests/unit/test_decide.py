"""The pure decision logic, checked against an independent model with Hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain import decide
from ledger.domain.decide import Family, Ids, Policy, ReusePolicy
from ledger.domain.errors import SessionExpired, SessionNotFound, SessionRevokedError, TokenInvalid
from ledger.domain.events import ReuseDetected, RevokeReason, UserSessionsRevoked
from ledger.domain.events import SessionRevoked as Revoked
from ledger.domain.refresh import RefreshToken, TokenKeys

KEYS = TokenKeys(b"m" * 32)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SID = "A" * 22
GRACE = timedelta(seconds=30)


def ids(n: int = 0) -> Ids:
    return Ids((f"{n:032x}", f"{n + 1:032x}"))


def start(
    secret: bytes = b"\x07" * 32, *, idle: int = 3600, absolute: int = 86400
) -> tuple[Family, RefreshToken]:
    first = KEYS.first(SID, secret)
    event = decide.start_session(
        sid=SID,
        sub="alice",
        client_id="web",
        scopes=("read",),
        first=first,
        keys=KEYS,
        idle_ttl=timedelta(seconds=idle),
        absolute_ttl=timedelta(seconds=absolute),
        now=T0,
        event_id=ids().values[0],
    )
    return decide.evolve(None, event, 1), first


def policy(
    grace: timedelta = GRACE, reuse: ReusePolicy = ReusePolicy.FAMILY, max_gen: int = 10_000
) -> Policy:
    return Policy(grace, reuse, max_gen)


def rotate(
    fam: Family, token: RefreshToken, now: datetime, pol: Policy | None = None, cut: int | None = None
) -> decide.RotateOutcome:
    return decide.rotate(fam, token, user_cut_seq=cut, keys=KEYS, policy=pol or policy(), now=now, ids=ids(7))


actions = st.lists(
    st.tuples(st.sampled_from(["current", "back", "forge"]), st.integers(1, 4), st.integers(0, 90)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(actions, st.sampled_from([0, 30]))
def test_decisions_match_the_model(steps: list[tuple[str, int, int]], grace_s: int) -> None:
    """Model: current token rotates once; its predecessor inside the grace window gets the same
    successor; any other genuine old token revokes the family; forgeries change nothing."""
    fam, first = start(idle=10**6, absolute=10**7)
    pol = policy(timedelta(seconds=grace_s))
    chain, now, seq, last_rotation, terminal = [first], T0, 1, None, False
    for kind, back, dt in steps:
        now += timedelta(seconds=dt)
        if kind == "forge":
            forged = RefreshToken(SID, len(chain) - 1, bytes(b ^ 0xFF for b in chain[-1].secret))
            with pytest.raises(TokenInvalid):
                rotate(fam, forged, now, pol)
            continue
        idx = len(chain) - 1 if kind == "current" else max(0, len(chain) - 1 - back)
        presented = chain[idx]
        if terminal:
            with pytest.raises(SessionRevokedError):
                rotate(fam, presented, now, pol)
            continue
        outcome = rotate(fam, presented, now, pol)
        if idx == len(chain) - 1:
            assert isinstance(outcome, decide.Rotated)
            assert outcome.successor == KEYS.successor(presented)
            assert outcome.events[0].generation == len(chain)
            seq += 1
            fam = decide.evolve(fam, outcome.events[0], seq)
            chain.append(outcome.successor)
            last_rotation = now
        elif idx == len(chain) - 2 and last_rotation is not None and now - last_rotation <= pol.grace:
            assert isinstance(outcome, decide.Retried)
            assert outcome.successor == chain[-1]  # the same successor, not a sibling
        else:
            assert isinstance(outcome, decide.ReuseFound)
            assert isinstance(outcome.family_events[0], ReuseDetected)
            assert outcome.family_events[0].presented_generation == idx
            for event in outcome.family_events:
                seq += 1
                fam = decide.evolve(fam, event, seq)
            terminal = True
        assert fam.head.generation == len(chain) - 1  # one successor per generation


def test_grace_is_only_for_the_immediate_predecessor() -> None:
    fam, t0 = start()
    r1 = rotate(fam, t0, T0)
    assert isinstance(r1, decide.Rotated)
    fam = decide.evolve(fam, r1.events[0], 2)
    r2 = rotate(fam, r1.successor, T0 + timedelta(seconds=1))
    assert isinstance(r2, decide.Rotated)
    fam = decide.evolve(fam, r2.events[0], 3)
    # Generation 0 is two behind: reuse even one second later.
    assert isinstance(rotate(fam, t0, T0 + timedelta(seconds=2)), decide.ReuseFound)
    # Generation 1 is the immediate predecessor: a retry inside the window.
    retried = rotate(fam, r1.successor, T0 + timedelta(seconds=2))
    assert isinstance(retried, decide.Retried) and retried.successor == r2.successor
    # ... and reuse once the window has passed.
    assert isinstance(rotate(fam, r1.successor, T0 + timedelta(seconds=32)), decide.ReuseFound)


def test_user_policy_revokes_every_session_of_the_user() -> None:
    fam, t0 = start()
    r1 = rotate(fam, t0, T0)
    assert isinstance(r1, decide.Rotated)
    fam = decide.evolve(fam, r1.events[0], 2)
    outcome = rotate(fam, t0, T0 + timedelta(minutes=5), policy(reuse=ReusePolicy.USER))
    assert isinstance(outcome, decide.ReuseFound)
    assert [type(e) for e in outcome.family_events] == [ReuseDetected]
    assert len(outcome.user_events) == 1 and isinstance(outcome.user_events[0], UserSessionsRevoked)
    assert outcome.user_events[0].sub == "alice"


def test_family_policy_appends_reuse_then_revocation() -> None:
    fam, t0 = start()
    r1 = rotate(fam, t0, T0)
    assert isinstance(r1, decide.Rotated)
    fam = decide.evolve(fam, r1.events[0], 2)
    outcome = rotate(fam, t0, T0 + timedelta(minutes=5))
    assert isinstance(outcome, decide.ReuseFound)
    assert [type(e) for e in outcome.family_events] == [ReuseDetected, Revoked]
    assert outcome.family_events[1].reason is RevokeReason.REUSE and not outcome.user_events


def test_idle_expiry_slides_and_absolute_caps() -> None:
    fam, t0 = start(idle=100, absolute=250)
    with pytest.raises(SessionExpired):
        rotate(fam, t0, T0 + timedelta(seconds=100))
    token, now = t0, T0
    for _ in range(2):  # each rotation slides the idle window ...
        now += timedelta(seconds=90)
        out = rotate(fam, token, now)
        assert isinstance(out, decide.Rotated)
        fam, token = decide.evolve(fam, out.events[0], fam.head_seq + 1), out.successor
    assert fam.refresh_expires_at == T0 + timedelta(seconds=250)  # ... up to the absolute cap
    with pytest.raises(SessionExpired):
        rotate(fam, token, T0 + timedelta(seconds=250))


def test_user_cut_after_session_start_revokes_and_before_does_not() -> None:
    fam, t0 = start()
    with pytest.raises(SessionRevokedError):
        rotate(fam, t0, T0, cut=fam.start_seq + 1)
    assert isinstance(rotate(fam, t0, T0, cut=fam.start_seq - 1), decide.Rotated)


def test_unknown_family_and_wrong_sid_are_invalid() -> None:
    fam, t0 = start()
    with pytest.raises(TokenInvalid):
        rotate(None, t0, T0)  # type: ignore[arg-type]
    with pytest.raises(TokenInvalid):
        rotate(fam, RefreshToken("B" * 22, 0, t0.secret), T0)
    with pytest.raises(TokenInvalid):
        rotate(fam, RefreshToken(SID, 5, t0.secret), T0)  # a generation from the future


def test_generation_limit() -> None:
    fam, t0 = start()
    with pytest.raises(SessionExpired):
        rotate(fam, t0, T0, policy(max_gen=0))


def test_revoke_session_is_idempotent_and_needs_a_session() -> None:
    fam, _ = start()
    event = decide.revoke_session(fam, reason=RevokeReason.LOGOUT, requested_at=T0, now=T0, event_id="0" * 32)
    assert event is not None and event.generation == 0 and event.sub == "alice"
    revoked = decide.evolve(fam, event, 2)
    assert (
        decide.revoke_session(revoked, reason=RevokeReason.ADMIN, requested_at=T0, now=T0, event_id="1" * 32)
        is None
    )
    with pytest.raises(SessionNotFound):
        decide.revoke_session(None, reason=RevokeReason.ADMIN, requested_at=T0, now=T0, event_id="1" * 32)


def test_evolve_needs_a_start() -> None:
    fam, _ = start()
    with pytest.raises(ValueError):
        decide.evolve(
            None,
            fam.head
            if not isinstance(fam.head, type(fam.started))
            else Revoked(
                event_id="2" * 32,
                occurred_at=T0,
                sid=SID,
                generation=0,
                token_hash=fam.head.token_hash,
                sub="alice",
                reason=RevokeReason.ADMIN,
                requested_at=T0,
            ),
            2,
        )
