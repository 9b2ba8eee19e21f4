"""Compact revocation notices (the broadcast's wire model), derived purely from recorded ledger events.

A notice is what an edge verifier needs to reject tokens, nothing more: the session
(``sid``), the user cut-off (``sub`` + the LEDGER sequence of the revoke-all, compared
with a token's ``ssq``) or the retired key (``kid``). Each notice lives on the broadcast
stream only as long as the access tokens it concerns can (``notice_ttl``), so a cold
verifier replays a small, bounded set.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from nats.js.api import StorageType, StreamConfig
from pydantic import AwareDatetime, BaseModel, ConfigDict

from ledger.contracts.subjects import NOTICES_STREAM, Subjects, encode_token
from ledger.domain.events import (
    AccessTokenRevoked,
    RecordedEvent,
    ReuseDetected,
    SessionRevoked,
    SigningKeyRetired,
    UserSessionsRevoked,
)

CLOCK_LEEWAY = timedelta(seconds=60)  # covers verifier exp leeway and clock skew
MIN_TTL = timedelta(seconds=1)  # the server refuses a TTL under one second

NoticeKind = Literal["session", "user", "key", "token"]


class Notice(BaseModel):
    """One revocation, as broadcast. ``revoke_seq`` is the source event's LEDGER sequence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: NoticeKind
    event_id: str
    revoke_seq: int
    revoked_at: AwareDatetime
    sid: str | None = None
    sub: str | None = None
    kid: str | None = None
    jti: str | None = None  # kind "token": one access token (AccessTokenRevoked)
    keep_sid: str | None = None  # kind "user": the session a "sign out all other devices" kept

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def decode_notice(raw: bytes) -> Notice:
    return Notice.model_validate_json(raw)


def notice_for(recorded: RecordedEvent) -> Notice | None:
    """The notice a recorded event calls for, or None when it revokes nothing."""
    event = recorded.event
    base = {"event_id": event.event_id, "revoke_seq": recorded.seq, "revoked_at": event.occurred_at}
    if isinstance(event, SessionRevoked | ReuseDetected):
        return Notice(kind="session", sid=event.sid, sub=event.sub, **base)
    if isinstance(event, UserSessionsRevoked):
        return Notice(kind="user", sub=event.sub, keep_sid=event.keep_sid, **base)
    if isinstance(event, SigningKeyRetired):
        return Notice(kind="key", kid=event.kid, **base)
    if isinstance(event, AccessTokenRevoked):
        return Notice(kind="token", jti=event.jti, sid=event.sid, sub=event.sub, **base)
    return None


def notice_subject(notice: Notice, prefix: str = "ledger") -> str:
    """``<p>.revoked.<kind>.<id>``: sid and kid are subject-safe by pattern, sub is encoded."""
    idents = {
        "session": notice.sid,
        "user": encode_token(notice.sub or ""),
        "key": notice.kid,
        "token": notice.jti,
    }
    ident = idents[notice.kind]
    return Subjects(prefix).notice(notice.kind, ident or "")


def notice_lifetime(access_ttl: timedelta) -> timedelta:
    """The longest a notice can matter: a token issued just before the revocation."""
    return access_ttl + CLOCK_LEEWAY


def notice_ttl(notice: Notice, access_ttl: timedelta, *, now: datetime) -> timedelta:
    """Time left for this notice, counted from the revocation, not from publishing late."""
    left = notice.revoked_at.astimezone(UTC) + notice_lifetime(access_ttl) - now
    return max(MIN_TTL, timedelta(seconds=int(left.total_seconds()) + 1))


def notices_stream_config(access_ttl: timedelta, prefix: str = "ledger", replicas: int = 1) -> StreamConfig:
    """Per-message TTL plus ``max_age`` as the backstop; both = the longest token life."""
    lifetime = notice_lifetime(access_ttl).total_seconds()
    return StreamConfig(
        name=NOTICES_STREAM,
        subjects=[Subjects(prefix).notices],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=lifetime,
        allow_msg_ttl=True,
        duplicate_window=min(120.0, lifetime),
        allow_direct=True,
    )
