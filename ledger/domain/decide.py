"""Pure decisions: (state, command, now) -> events, or a typed refusal.

Nothing here touches NATS, the clock or a random source: those come in as
arguments, which is what makes this the easiest code in the project to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from ledger.domain.access import AccessClaims
from ledger.domain.errors import (
    BadRequest,
    IdempotencyKeyReused,
    SessionExpired,
    SessionLimitReached,
    SessionNotFound,
    SessionRevokedError,
    TokenInvalid,
)
from ledger.domain.events import (
    MAX_SESSION_LIMIT,
    AccessTokenRevoked,
    AuthContext,
    DeviceInfo,
    FamilyEvent,
    ReuseDetected,
    RevokeReason,
    SessionAdmitted,
    SessionRevoked,
    SessionStarted,
    SessionSteppedUp,
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
    def head_issued_at(self) -> datetime:
        """When the current refresh token was issued (a step-up does not issue one)."""
        head = self.head
        return head.rotated_at if isinstance(head, SessionSteppedUp) else head.occurred_at

    @property
    def raised_auth(self) -> AuthContext | None:
        """The auth context a step-up set (carried by every later rotation), else None."""
        head = self.head
        return head.auth if isinstance(head, TokenRotated | SessionSteppedUp) else None

    @property
    def auth(self) -> AuthContext | None:
        """What the family's access tokens say about the authentication: raised, or the start's."""
        return self.raised_auth or self.started.auth

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
    auth: AuthContext | None = None,
    device: DeviceInfo | None = None,
) -> SessionStarted:
    check_auth(auth, now)
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
        auth=auth,
        device=device,
    )


AUTH_TIME_LEEWAY = timedelta(seconds=60)


def check_auth(auth: AuthContext | None, now: datetime) -> None:
    """An authentication cannot have happened in the future (beyond clock skew)."""
    if auth is not None and auth.auth_time is not None and auth.auth_time > now + AUTH_TIME_LEEWAY:
        raise BadRequest("auth_time is in the future")


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
    device: DeviceInfo | None = None,
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
            auth=fam.raised_auth,
            device=device,
        )
        return Rotated((event,), successor)
    superseded_at = fam.head_issued_at if token.generation == head.generation - 1 else None
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


def check_owner(family: Family | None, sub: str) -> Family:
    """The family, if it is ``sub``'s: another user's session looks exactly like an unknown one."""
    if family is None or family.started.sub != sub:
        raise SessionNotFound("no such session")
    return family


def step_up(
    family: Family | None,
    *,
    sub: str,
    auth: AuthContext,
    user_cut_seq: int | None,
    now: datetime,
    event_id: str,
) -> SessionSteppedUp:
    """The user re-authenticated: the family's next access tokens carry ``auth``."""
    fam = check_owner(family, sub)
    check_alive(fam, user_cut_seq, now)
    check_auth(auth, now)
    head = fam.head
    return SessionSteppedUp(
        event_id=event_id,
        occurred_at=now,
        sid=head.sid,
        generation=head.generation,
        token_hash=head.token_hash,
        sub=sub,
        auth=auth,
        rotated_at=fam.head_issued_at,
    )


def revoke_others(
    current: Family | None,
    *,
    sub: str,
    user_cut_seq: int | None,
    reason: RevokeReason,
    now: datetime,
    event_id: str,
) -> UserSessionsRevoked:
    """ "Sign out all other devices": a revoke-all of ``sub`` that keeps the (live) current session."""
    fam = check_owner(current, sub)
    check_alive(fam, user_cut_seq, now)
    return UserSessionsRevoked(
        event_id=event_id,
        occurred_at=now,
        sub=sub,
        reason=reason,
        not_before=now,
        requested_at=now,
        keep_sid=fam.started.sid,
    )


def effective_cut(cut_seq: int | None, keep_sid: str | None, sid: str) -> int | None:
    """The user cut that applies to session ``sid``: none for the session a "sign out the
    others" kept (it was alive then, so it had survived every earlier cut as well)."""
    return None if keep_sid is not None and keep_sid == sid else cut_seq


def replay_start(family: Family, *, client_id: str | None, scopes: tuple[str, ...]) -> Family:
    """A retried idempotent start: the same session, while it is still at its first token."""
    head, started = family.head, family.started
    if (
        isinstance(head, SessionRevoked)
        and head.reason is RevokeReason.SESSION_LIMIT
        and head.generation == 0
    ):
        raise SessionLimitReached("the user has the maximum number of sessions")
    if not isinstance(head, SessionStarted) or (started.client_id, started.scopes) != (client_id, scopes):
        raise IdempotencyKeyReused("idempotency key already used by another or a later session")
    return family


class LimitPolicy(StrEnum):
    EVICT_OLDEST = "evict_oldest"  # the new session is admitted, the oldest ones revoked
    REFUSE = "refuse"  # the new session is refused (and revoked before any token leaves)


@dataclass(frozen=True, slots=True)
class Admission:
    """Revoke ``evict`` (reason ``session_limit``), then append ``event`` with CAS on the user."""

    event: SessionAdmitted
    evict: tuple[str, ...]


def admit(
    *,
    sub: str,
    sid: str,
    live: Sequence[tuple[str, int]],
    limit: int,
    policy: LimitPolicy,
    now: datetime,
    event_id: str,
    uncounted: Sequence[tuple[str, int]] = (),
) -> Admission:
    """Admit ``sid`` under the cap, given the counted sessions that are alive now as
    ``(sid, start_seq)``; refuse, or evict the oldest (by stream order) to make room.
    ``uncounted`` (a per-client cap: the user's live sessions of other clients) stay listed."""
    ordered = sorted((x for x in live if x[0] != sid), key=lambda x: x[1])
    excess = len(ordered) + 1 - limit
    if excess > 0 and policy is LimitPolicy.REFUSE:
        raise SessionLimitReached("the user has the maximum number of sessions")
    evict = tuple(s for s, _ in ordered[: max(excess, 0)])
    rest = sorted([*ordered[max(excess, 0) :], *(x for x in uncounted if x[0] != sid)], key=lambda x: x[1])
    kept = (*(s for s, _ in rest), sid)
    if len(kept) > MAX_SESSION_LIMIT:
        raise SessionLimitReached("the user has the maximum number of sessions over all clients")
    event = SessionAdmitted(
        event_id=event_id, occurred_at=now, sub=sub, sid=sid, live=kept, evicted=evict, limit=limit
    )
    return Admission(event, evict)
