"""The ledger's event vocabulary: frozen pydantic models, one discriminated union.

Events hold ids and keyed hashes only, never a raw refresh token, access token or
private key (DESIGN invariant 4). Old schema versions are upcast by pure
``dict -> dict`` functions before validation, so stored bytes stay readable.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from ledger.domain.ids import EVENT_ID_PATTERN, KID_PATTERN, NAME_PATTERN, SID_PATTERN, SUB_MAX

Sid = Annotated[str, Field(pattern=SID_PATTERN)]
Sub = Annotated[str, Field(min_length=1, max_length=SUB_MAX)]  # stored events stay readable
TokenHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Generation = Annotated[int, Field(ge=0)]


class RevokeReason(StrEnum):
    LOGOUT = "logout"
    REUSE = "reuse"
    ADMIN = "admin"
    PASSWORD_CHANGE = "password_change"
    USER_REQUEST = "user_request"
    COMPROMISE = "compromise"
    SESSION_LIMIT = "session_limit"  # evicted by the per-user session cap (policy evict_oldest)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    event_id: Annotated[str, Field(pattern=EVENT_ID_PATTERN)]
    occurred_at: AwareDatetime


class AuthContext(BaseModel):
    """How the user authenticated (OpenID Connect ``acr``, RFC 8176 ``amr``, ``auth_time``):
    given at start or by a step-up, copied into every access token of the family."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    acr: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    amr: Annotated[tuple[Annotated[str, Field(min_length=1, max_length=32)], ...], Field(max_length=8)] = ()
    auth_time: AwareDatetime | None = None


DeviceClass = Literal["desktop", "mobile", "tablet", "bot", "other"]


class DeviceInfo(BaseModel):
    """What the ledger keeps of a client context: minimised, never a raw user agent and, unless
    the operator chose ``raw``, never a raw IP (``ledger.domain.device``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_class: DeviceClass = "other"
    ua_family: Annotated[str, Field(max_length=64)] | None = None  # e.g. "Firefox on Linux"
    label: Annotated[str, Field(max_length=64)] | None = None  # chosen by the user or the app
    ip_hint: Annotated[str, Field(max_length=64)] | None = None  # truncated, keyed hash or raw


class _FamilyEvent(_Event):
    """Every family event carries the family head it leaves behind (generation + hash),
    so the latest event alone tells the current state: no fold per request."""

    sid: Sid
    generation: Generation
    token_hash: TokenHash


class SessionStarted(_FamilyEvent):
    type: Literal["SessionStarted"] = "SessionStarted"
    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]  # v2: auth, device
    sub: Sub
    client_id: Annotated[str, Field(max_length=128)] | None = None
    scopes: tuple[Annotated[str, Field(max_length=64)], ...] = ()
    idle_ttl_s: Annotated[int, Field(gt=0)]
    absolute_ttl_s: Annotated[int, Field(gt=0)]
    auth: AuthContext | None = None
    device: DeviceInfo | None = None


class TokenRotated(_FamilyEvent):
    type: Literal["TokenRotated"] = "TokenRotated"
    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]  # v2: auth, device
    auth: AuthContext | None = None  # the family's level when a step-up raised it (else: the start's)
    device: DeviceInfo | None = None  # the client context of this rotation, when one was given


class SessionSteppedUp(_FamilyEvent):
    """The user re-authenticated (e.g. MFA): the family's next access tokens carry ``auth``.
    The refresh-token head is unchanged; ``rotated_at`` is when that head was issued, so the
    grace window of its predecessor is still counted from the rotation."""

    type: Literal["SessionSteppedUp"] = "SessionSteppedUp"
    sub: Sub
    auth: AuthContext
    rotated_at: AwareDatetime


class ReuseDetected(_FamilyEvent):
    """A genuinely issued but superseded token was presented. Terminal for the family."""

    type: Literal["ReuseDetected"] = "ReuseDetected"
    sub: Sub
    presented_generation: Generation
    superseded_at: AwareDatetime | None = None  # known for the immediate predecessor
    policy: Literal["family", "user"] = "family"


class SessionRevoked(_FamilyEvent):
    type: Literal["SessionRevoked"] = "SessionRevoked"
    sub: Sub
    reason: RevokeReason
    requested_at: AwareDatetime


class UserSessionsRevoked(_Event):
    """Every session of ``sub`` that started before this event (by stream sequence) is dead,
    except ``keep_sid`` ("sign out all other devices"; it was alive when this was appended).
    A reader that ignores ``keep_sid`` revokes one session too many, never one too few."""

    type: Literal["UserSessionsRevoked"] = "UserSessionsRevoked"
    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]  # v2: keep_sid
    sub: Sub
    reason: RevokeReason
    not_before: AwareDatetime
    requested_at: AwareDatetime
    keep_sid: Sid | None = None


MAX_SESSION_LIMIT = 1000


class SessionAdmitted(_Event):
    """The per-user session cap admitted ``sid``: ``live`` are the user's counted sessions
    after it (``sid`` included), ``evicted`` those revoked to make room. Appended with
    compare-and-set on the user's subjects, so concurrent starts are admitted one by one."""

    type: Literal["SessionAdmitted"] = "SessionAdmitted"
    sub: Sub
    sid: Sid
    live: Annotated[tuple[Sid, ...], Field(max_length=MAX_SESSION_LIMIT)]
    evicted: Annotated[tuple[Sid, ...], Field(max_length=MAX_SESSION_LIMIT)] = ()
    limit: Annotated[int, Field(ge=1, le=MAX_SESSION_LIMIT)]


class AccessTokenRevoked(_Event):
    """One access token (``jti``) revoked alone (RFC 7009); its session goes on.

    Lives on its own subject (``<p>.ev.t.<jti>.revoked``), not the family's: it changes no
    family head. ``expires_at`` bounds how long anyone must remember it.
    """

    type: Literal["AccessTokenRevoked"] = "AccessTokenRevoked"
    jti: Annotated[str, Field(pattern=NAME_PATTERN)]
    sid: Sid
    sub: Sub
    expires_at: AwareDatetime


class SigningKeyAdded(_Event):
    type: Literal["SigningKeyAdded"] = "SigningKeyAdded"
    schema_version: Literal[2] = 2  # type: ignore[assignment]  # v2: activates_at, proof
    kid: Annotated[str, Field(pattern=KID_PATTERN)]
    alg: Literal["ES256", "EdDSA", "RS256"]
    public_jwk: dict[str, str]
    activates_at: AwareDatetime | None = None  # signs from then on; None: at once (v1)
    proof: Annotated[str, Field(max_length=4096)] | None = None  # JWS by a trusted key; None: the first key


class SigningKeyRetired(_Event):
    schema_version: Literal[2] = 2  # type: ignore[assignment]  # v2: proof
    type: Literal["SigningKeyRetired"] = "SigningKeyRetired"
    kid: Annotated[str, Field(pattern=KID_PATTERN)]
    reason: str = "rotation"
    proof: Annotated[str, Field(max_length=4096)] | None = None


class SigningKeyActivated(_Event):
    """A published key signs from now on, ahead of its ``activates_at``: every live verifier
    acknowledged it. Signed like the other key events (an unsigned one changes nothing)."""

    type: Literal["SigningKeyActivated"] = "SigningKeyActivated"
    kid: Annotated[str, Field(pattern=KID_PATTERN)]
    verifiers: Annotated[int, Field(ge=0)] = 0  # how many live verifiers had acknowledged it
    proof: Annotated[str, Field(max_length=4096)] | None = None


KeyEvent = SigningKeyAdded | SigningKeyActivated | SigningKeyRetired
FamilyEvent = SessionStarted | TokenRotated | ReuseDetected | SessionRevoked | SessionSteppedUp
Event = Annotated[
    SessionStarted
    | TokenRotated
    | ReuseDetected
    | SessionRevoked
    | SessionSteppedUp
    | UserSessionsRevoked
    | AccessTokenRevoked
    | SessionAdmitted
    | SigningKeyAdded
    | SigningKeyActivated
    | SigningKeyRetired,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def _to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Key events v1 had no proof and no activation time: both absent means "at once, unsigned"."""
    return {**data, "schema_version": 2}


# (type, from_version) -> pure function producing the next version's dict.
# SessionStarted, TokenRotated and UserSessionsRevoked v2 only added optional fields whose
# absence keeps the v1 meaning, so they accept ``schema_version`` 1 as stored: no upcaster,
# which keeps the analytics ingest of those (most frequent) events on its byte-copy fast path.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("SigningKeyAdded", 1): _to_v2,
    ("SigningKeyRetired", 1): _to_v2,
}


def upcast(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a stored event dict up to the current schema version."""
    data.setdefault("schema_version", 1)
    while (step := UPCASTERS.get((str(data.get("type")), int(data["schema_version"])))) is not None:
        data = step(dict(data))
    return data


def decode_event(raw: bytes) -> Event:
    return EVENT_ADAPTER.validate_python(upcast(json.loads(raw)))


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as read back from the stream: it also knows where it lives.

    A plain dataclass: the event inside is already validated, and this sits on the
    rotation hot path (one per direct get).
    """

    event: Event
    seq: int
    subject: str
    time: datetime | None = None
