"""The sessions read model as a pure fold of the ledger stream.

State is a mapping ``key -> record``, the same keys the KV store uses:

``s.<sid>``             one session: its ``SessionStarted`` and its latest family event
``u.<sub>.s.<sid>``     index entry: ``sid`` is one of ``sub``'s sessions
``u.<sub>.cut``         the user's latest revoke-all (stream seq = the not-before cut-off)
``k.<kid>``             a signing key's public JWK and lifecycle
``t.<jti>``             one access token revoked alone (RFC 7009)
``checkpoint``          the last stream sequence folded

Every record carries ``seq``, the last stream sequence applied to its key: an event
whose sequence is not greater is a redelivery and changes nothing (exactly-once).
Expiry is never written: ``is_active`` answers it from ``now``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from ledger.contracts.subjects import encode_token
from ledger.domain.decide import Family, check_alive, effective_cut
from ledger.domain.errors import SessionExpired, SessionRevokedError
from ledger.domain.events import (
    AccessTokenRevoked,
    DeviceInfo,
    Event,
    RecordedEvent,
    ReuseDetected,
    RevokeReason,
    SessionAdmitted,
    SessionStarted,
    SessionSteppedUp,
    SigningKeyActivated,
    SigningKeyAdded,
    SigningKeyRetired,
    TokenRotated,
    UserSessionsRevoked,
)
from ledger.domain.events import SessionRevoked as SessionRevokedEvent

CHECKPOINT_KEY = "checkpoint"
HeadEvent = Annotated[
    SessionStarted | TokenRotated | ReuseDetected | SessionRevokedEvent | SessionSteppedUp,
    Field(discriminator="type"),
]
FamilyStep = TokenRotated | ReuseDetected | SessionRevokedEvent | SessionSteppedUp


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int  # last stream sequence applied to this key


class SessionRecord(_Record):
    kind: Literal["session"] = "session"
    started: SessionStarted
    start_seq: int
    head: HeadEvent
    rotations: int = 0
    last_rotated_at: AwareDatetime | None = None
    last_device: DeviceInfo | None = None  # from the last rotation that carried a client context

    @property
    def device(self) -> DeviceInfo | None:
        return self.last_device or self.started.device

    @property
    def last_seen_at(self) -> datetime:
        """The session's last activity the log knows of: its last rotation (no extra writes)."""
        return self.last_rotated_at or self.started.occurred_at

    def family(self) -> Family:
        """The ledger's own view of this session (head = latest family event, at ``seq``)."""
        return Family(started=self.started, start_seq=self.start_seq, head=self.head, head_seq=self.seq)


class UserSessionRecord(_Record):
    kind: Literal["user_session"] = "user_session"
    sid: str
    start_seq: int


class UserCutRecord(_Record):
    """``seq`` is the cut: sessions whose ``start_seq`` is lower are dead."""

    kind: Literal["user_cut"] = "user_cut"
    sub: str
    not_before: AwareDatetime
    reason: RevokeReason
    revocations: int = 1
    keep_sid: str | None = None  # "sign out all other devices": this session is not cut

    def cut_for(self, sid: str) -> int | None:
        return effective_cut(self.seq, self.keep_sid, sid)


class KeyRecord(_Record):
    kind: Literal["signing_key"] = "signing_key"
    kid: str
    alg: str
    public_jwk: dict[str, str]
    added_seq: int
    retired_seq: int | None = None


class RevokedTokenRecord(_Record):
    """One access token revoked alone; introspection answers it inactive."""

    kind: Literal["revoked_token"] = "revoked_token"
    jti: str
    sid: str
    expires_at: AwareDatetime


Record = Annotated[
    SessionRecord | UserSessionRecord | UserCutRecord | KeyRecord | RevokedTokenRecord,
    Field(discriminator="kind"),
]
RECORD_ADAPTER: TypeAdapter[Record] = TypeAdapter(Record)


def session_key(sid: str) -> str:
    return f"s.{sid}"


def user_prefix(sub: str) -> str:
    return f"u.{encode_token(sub)}"


def user_session_key(sub: str, sid: str) -> str:
    return f"{user_prefix(sub)}.s.{sid}"


def user_cut_key(sub: str) -> str:
    return f"{user_prefix(sub)}.cut"


def is_cut_key(key: str) -> bool:
    return key.startswith("u.") and key.endswith(".cut")


def signing_key_key(kid: str) -> str:
    return f"k.{kid}"


def revoked_token_key(jti: str) -> str:
    return f"t.{jti}"


def touched(event: Event) -> tuple[str, ...]:
    """The keys an event may change."""
    if isinstance(event, SessionStarted):
        return (session_key(event.sid), user_session_key(event.sub, event.sid))
    if isinstance(event, FamilyStep):
        return (session_key(event.sid),)
    if isinstance(event, UserSessionsRevoked):
        return (user_cut_key(event.sub),)
    if isinstance(event, AccessTokenRevoked):
        return (revoked_token_key(event.jti),)
    if isinstance(event, SessionAdmitted):
        return ()  # the cap's bookkeeping: the sessions themselves say all a reader needs
    return (signing_key_key(event.kid),)


def next_record(
    key: str, current: Record | None, rec: RecordedEvent, cut: Record | None = None
) -> Record | None:
    """The record at ``key`` after ``rec``, or None when ``rec`` changes nothing there.
    ``cut`` is the user's cut record as of ``rec`` (read for a rotation: ``cut_key``)."""
    if current is not None and current.seq >= rec.seq:
        return None  # already applied: a redelivery is a no-op
    event = rec.event
    if isinstance(event, SessionStarted):
        return _started(key, current, event, rec.seq)
    if isinstance(event, FamilyStep):
        return _family_step(current, event, rec.seq, cut)
    if isinstance(event, UserSessionsRevoked):
        return _user_cut(current, event, rec.seq)
    if isinstance(event, AccessTokenRevoked):
        return RevokedTokenRecord(seq=rec.seq, jti=event.jti, sid=event.sid, expires_at=event.expires_at)
    if isinstance(event, SessionAdmitted):
        return None
    return _signing_key(current, event, rec.seq)


def _started(key: str, current: Record | None, event: SessionStarted, seq: int) -> Record | None:
    if current is not None:
        return None  # a family starts once (the ledger's CAS guarantees it)
    if key.startswith("s."):
        return SessionRecord(seq=seq, started=event, start_seq=seq, head=event)
    return UserSessionRecord(seq=seq, sid=event.sid, start_seq=seq)


def _family_step(current: Record | None, event: FamilyStep, seq: int, cut: Record | None) -> Record | None:
    if not isinstance(current, SessionRecord):
        return None  # no SessionStarted before it: nothing to extend
    update: dict[str, Any] = {"seq": seq, "head": event}  # the head is the ledger's, refused or not
    if isinstance(event, TokenRotated) and not refused(current, cut, seq):
        update.update(rotations=current.rotations + 1, last_rotated_at=event.occurred_at)
        if event.device is not None:
            update["last_device"] = event.device
    return current.model_copy(update=update)


def refused(session: SessionRecord, cut: Record | None, seq: int) -> bool:
    """Did the ledger refuse the rotation at ``seq``? It was appended after a revoke-all that its
    session predates, so the post-commit cut check answered ``session_revoked`` (and the edges
    ignore its token: its ``ssq`` is below the cut). Such a rotation is not counted."""
    if not isinstance(cut, UserCutRecord):
        return False
    applies = cut.cut_for(session.started.sid)  # a kept session ("sign out the others") is not cut
    return applies is not None and session.start_seq < applies < seq


def cut_key(lookup: Mapping[str, Record], event: Event) -> str | None:
    """The user cut a rotation's fold reads (the session, hence its user, must be known)."""
    if not isinstance(event, TokenRotated):
        return None
    session = lookup.get(session_key(event.sid))
    return user_cut_key(session.started.sub) if isinstance(session, SessionRecord) else None


def _user_cut(current: Record | None, event: UserSessionsRevoked, seq: int) -> UserCutRecord:
    count = current.revocations + 1 if isinstance(current, UserCutRecord) else 1
    return UserCutRecord(
        seq=seq,
        sub=event.sub,
        not_before=event.not_before,
        reason=event.reason,
        revocations=count,
        keep_sid=event.keep_sid,
    )


def _signing_key(
    current: Record | None, event: SigningKeyAdded | SigningKeyActivated | SigningKeyRetired, seq: int
) -> Record | None:
    if isinstance(event, SigningKeyActivated):
        return None  # when a key starts signing matters to signers, not to what verifies
    if isinstance(event, SigningKeyAdded):
        retired = current.retired_seq if isinstance(current, KeyRecord) else None
        return KeyRecord(
            seq=seq,
            kid=event.kid,
            alg=event.alg,
            public_jwk=event.public_jwk,
            added_seq=seq,
            retired_seq=retired,
        )
    if not isinstance(current, KeyRecord):
        return None
    return current.model_copy(update={"seq": seq, "retired_seq": seq})


@dataclass(frozen=True)
class SessionsState:
    records: Mapping[str, Record] = field(default_factory=dict)
    checkpoint: int = 0


EMPTY = SessionsState()


def changes(lookup: Mapping[str, Record], rec: RecordedEvent) -> dict[str, Record]:
    """The records ``rec`` writes, given the current ones (the store applies exactly these)."""
    out: dict[str, Record] = {}
    read = cut_key(lookup, rec.event)
    cut = lookup.get(read) if read is not None else None
    for key in touched(rec.event):
        new = next_record(key, lookup.get(key), rec, cut)
        if new is not None:
            out[key] = new
    return out


def apply(state: SessionsState, rec: RecordedEvent) -> SessionsState:
    """One fold step; pure (returns a new state)."""
    return SessionsState({**state.records, **changes(state.records, rec)}, max(state.checkpoint, rec.seq))


def fold(events: Iterable[RecordedEvent], state: SessionsState = EMPTY) -> SessionsState:
    """``apply`` over many events, without copying the mapping at every step."""
    records, checkpoint = dict(state.records), state.checkpoint
    for rec in events:
        records.update(changes(records, rec))
        checkpoint = max(checkpoint, rec.seq)
    return SessionsState(records, checkpoint)


# Fields added after records were first written: left out while unset, so a record that never
# used them has the bytes it always had (a bucket written before they existed equals a rebuild).
LATER_FIELDS = frozenset({"auth", "device", "last_device", "keep_sid"})


def _without_unset_later_fields(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: _without_unset_later_fields(v)
            for k, v in data.items()
            if not (v is None and k in LATER_FIELDS)
        }
    return data


def encode(record: Record) -> bytes:
    """Canonical bytes: sorted keys, no whitespace, so rebuild == live byte for byte."""
    return canonical(_without_unset_later_fields(record.model_dump(mode="json")))


def decode(raw: bytes) -> Record:
    return RECORD_ADAPTER.validate_json(raw)


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_checkpoint(seq: int) -> bytes:
    return canonical({"seq": seq})


def decode_checkpoint(raw: bytes) -> int:
    return int(json.loads(raw)["seq"])


def snapshot(state: SessionsState) -> dict[str, bytes]:
    """The state exactly as the KV bucket should hold it."""
    out = {key: encode(record) for key, record in state.records.items()}
    if state.checkpoint:
        out[CHECKPOINT_KEY] = encode_checkpoint(state.checkpoint)
    return out


def is_active(session: SessionRecord, now: datetime, user_cut: int | None) -> bool:
    """The ledger's own liveness rule (``decide.check_alive``) on the projected family."""
    try:
        check_alive(session.family(), user_cut, now)
    except (SessionRevokedError, SessionExpired):
        return False
    return True


def status(
    session: SessionRecord, now: datetime, user_cut: int | None
) -> Literal["active", "expired", "revoked"]:
    family = session.family()
    if family.is_terminal or family.revoked_by_user_cut(user_cut):
        return "revoked"
    return "active" if now < family.refresh_expires_at else "expired"


def end_reason(session: SessionRecord, user_cut: int | None) -> str | None:
    head = session.head
    if isinstance(head, SessionRevokedEvent):
        return head.reason.value
    if isinstance(head, ReuseDetected):
        return "reuse"
    return "user_revoked" if session.family().revoked_by_user_cut(user_cut) else None
