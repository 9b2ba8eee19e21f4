"""Pure decisions: (state, command, now) -> events, or a typed refusal.

Nothing here touches NATS, the clock or a random source: those come in as
arguments, which is what makes this the easiest code in the project to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from ledger.domain.access import AccessClaims
from ledger.domain.errors import SessionExpired, SessionNotFound, SessionRevokedError, TokenInvalid
from ledger.domain.events import (
    AccessTokenRevoked,
    FamilyEvent,
    ReuseDetected,
    RevokeReason,
    SessionRevoked,
    SessionStarted,
    TokenRotated,
    UserSessionsRevoked,
)
from ledger.domain.refresh import RefreshToken, TokenKeys

TERMINAL = (SessionRevoked, ReuseDetected)


class ReusePolicy(StrEnum):
    FAMILY = "family"  # revoke the session whose token was replayed
    USER = "user"  # revoke every session of that user


@dataclass(frozen=True, slots=True)
class Family:
    """What a decision needs about one session: its immutable facts and its latest event."""

    started: SessionStarted
    start_seq: int
    head: FamilyEvent
    head_seq: int

    @property
    def is_terminal(self) -> bool:
        return isinstance(self.head, TERMINAL)

    @property
    def expires_at(self) -> datetime:
        return self.started.occurred_at + timedelta(seconds=self.started.absolute_ttl_s)

    @property
    def last_activity(self) -> datetime:
        return self.head.occurred_at if not self.is_terminal else self.started.occurred_at

    @property
    def refresh_expires_at(self) -> datetime:
        idle = self.last_activity + timedelta(seconds=self.started.idle_ttl_s)
        return min(idle, self.expires_at)

    def revoked_by_user_cut(self, user_cut_seq: int | None) -> bool:
        return user_cut_seq is not None and user_cut_seq > self.start_seq


def evolve(family: Family | None, event: FamilyEvent, seq: int) -> Family:
    """The family after ``event`` (recorded at stream ``seq``): its head is simply the event."""
    if isinstance(event, SessionStarted):
        return Family(started=event, start_seq=seq, head=event, head_seq=seq)
    if family is None:
        raise ValueError("a family starts with SessionStarted")
    return Family(started=family.started, start_seq=family.start_seq, head=event, head_seq=seq)


@dataclass(frozen=True, slots=True)
class Policy:
    grace: timedelta
    reuse: ReusePolicy
    max_generations: int


@dataclass(frozen=True, slots=True)
class Ids:
    """Fresh event ids for one decision (randomness is an argument)."""

    values: tuple[str, ...]

    def __getitem__(self, i: int) -> str:
        return self.values[i]


@dataclass(frozen=True, slots=True)
class Rotated:
    """Append ``events`` (with CAS on the family); the answer is ``successor``."""

    events: tuple[TokenRotated]
    successor: RefreshToken


@dataclass(frozen=True, slots=True)
class Retried:
    """Retry of the rotation that just happened: same successor, nothing appended."""

    successor: RefreshToken


@dataclass(frozen=True, slots=True)
class ReuseFound:
    """Append ``family_events`` (CAS) and ``user_events``, then answer ``token_reused``."""

    family_events: tuple[FamilyEvent, ...]
    user_events: tuple[UserSessionsRevoked, ...]


RotateOutcome = Rotated | Retried | ReuseFound


def start_session(
    *,
    sid: str,
    sub: str,
    client_id: str | None,
    scopes: tuple[str, ...],
    first: RefreshToken,
    keys: TokenKeys,
    idle_ttl: timedelta,
    absolute_ttl: timedelta,
    now: datetime,
    event_id: str,
) -> SessionStarted:
    return SessionStarted(
        event_id=event_id,
        occurred_at=now,
        sid=sid,
        generation=0,
        token_hash=keys.hash(first),
        sub=sub,
        client_id=client_id,
        scopes=scopes,
        idle_ttl_s=int(idle_ttl.total_seconds()),
        absolute_ttl_s=int(absolute_ttl.total_seconds()),
    )


def check_genuine(family: Family | None, token: RefreshToken, keys: TokenKeys, max_steps: int) -> Family:
    """Refuse anything the ledger did not issue: knowing a sid is not enough (invariant 3)."""
    if family is None or token.sid != family.started.sid:
        raise TokenInvalid("unknown refresh token")
    head = family.head
    if not keys.is_ancestor(token, head.generation, head.token_hash, max_steps):
        raise TokenInvalid("unknown refresh token")
    return family


def check_alive(family: Family, user_cut_seq: int | None, now: datetime) -> None:
    if family.is_terminal or family.revoked_by_user_cut(user_cut_seq):
        raise SessionRevokedError("session was revoked")
    if now >= family.refresh_expires_at:
        raise SessionExpired("session expired")


def rotate(
    family: Family | None,
    token: RefreshToken,
    *,
    user_cut_seq: int | None,
    keys: TokenKeys,
    policy: Policy,
    now: datetime,
    ids: Ids,
) -> RotateOutcome:
    fam = check_genuine(family, token, keys, policy.max_generations)
    check_alive(fam, user_cut_seq, now)
    head = fam.head
    if token.generation == head.generation:
        if head.generation >= policy.max_generations:
            raise SessionExpired("generation limit reached; log in again")
        successor = keys.successor(token)
        event = TokenRotated(
            event_id=ids[0],
            occurred_at=now,
            sid=head.sid,
            generation=successor.generation,
            token_hash=keys.hash(successor),
        )
        return Rotated((event,), successor)
    superseded_at = head.occurred_at if token.generation == head.generation - 1 else None
    if superseded_at is not None and now - superseded_at <= policy.grace:
        return Retried(keys.successor(token))
    return _reuse(fam, token, superseded_at, policy, now, ids)


def _reuse(
    fam: Family,
    token: RefreshToken,
    superseded_at: datetime | None,
    policy: Policy,
    now: datetime,
    ids: Ids,
) -> ReuseFound:
    head, sub = fam.head, fam.started.sub
    detected = ReuseDetected(
        event_id=ids[0],
        occurred_at=now,
        sid=head.sid,
        generation=head.generation,
        token_hash=head.token_hash,
        sub=sub,
        presented_generation=token.generation,
        superseded_at=superseded_at,
        policy=policy.reuse.value,
    )
    if policy.reuse is ReusePolicy.USER:
        user = UserSessionsRevoked(
            event_id=ids[1],
            occurred_at=now,
            sub=sub,
            reason=RevokeReason.REUSE,
            not_before=now,
            requested_at=now,
        )
        return ReuseFound((detected,), (user,))
    revoked = SessionRevoked(
        event_id=ids[1],
        occurred_at=now,
        sid=head.sid,
        generation=head.generation,
        token_hash=head.token_hash,
        sub=sub,
        reason=RevokeReason.REUSE,
        requested_at=now,
    )
    return ReuseFound((detected, revoked), ())


def revoke_session(
    family: Family | None,
    *,
    reason: RevokeReason,
    requested_at: datetime,
    now: datetime,
    event_id: str,
) -> SessionRevoked | None:
    """The revocation event, or None when the family is already terminal (idempotent)."""
    if family is None:
        raise SessionNotFound("no such session")
    if family.is_terminal:
        return None
    head = family.head
    return SessionRevoked(
        event_id=event_id,
        occurred_at=now,
        sid=head.sid,
        generation=head.generation,
        token_hash=head.token_hash,
        sub=family.started.sub,
        reason=reason,
        requested_at=requested_at,
    )


def revoke_user(
    sub: str, *, reason: RevokeReason, requested_at: datetime, now: datetime, event_id: str
) -> UserSessionsRevoked:
    return UserSessionsRevoked(
        event_id=event_id,
        occurred_at=now,
        sub=sub,
        reason=reason,
        not_before=now,
        requested_at=requested_at,
    )


def revoke_access(claims: AccessClaims, *, now: datetime, event_id: str) -> AccessTokenRevoked | None:
    """Revoke one verified access token; None when it has expired already (nothing to do)."""
    expires_at = datetime.fromtimestamp(claims.exp, tz=UTC)
    if expires_at <= now:
        return None
    return AccessTokenRevoked(
        event_id=event_id,
        occurred_at=now,
        jti=claims.jti,
        sid=claims.sid,
        sub=claims.sub,
        expires_at=expires_at,
    )
