"""Propagation receipts: each edge verifier says when it applied each revocation notice.

Shared by the edge (which publishes them) and the analytics (which joins them to the
revocation they answer): stream ``LEDGER_RECEIPTS``, subject ``<prefix>.receipt.<verifier_id>``,
one JSON receipt per notice applied per verifier::

    {"verifier": str, "event_id": str, "revoke_seq": int, "kind": "session"|"user"|"key",
     "sid": str|null, "sub": str|null, "kid": str|null, "applied_at": ISO-8601 UTC}

Receipts carry ids only, never a token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from nats.js.api import StorageType, StreamConfig
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer

from ledger.contracts.notices import NoticeKind
from ledger.contracts.subjects import RECEIPTS_STREAM, Subjects
from ledger.domain.ids import NAME_PATTERN

RECEIPTS_MAX_AGE = timedelta(days=90)


class Receipt(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    verifier: Annotated[str, Field(pattern=NAME_PATTERN)]
    event_id: str
    revoke_seq: int
    kind: NoticeKind
    sid: str | None
    sub: str | None
    kid: str | None
    applied_at: AwareDatetime

    @field_serializer("applied_at")
    def _iso_utc(self, value: datetime) -> str:
        return value.astimezone(UTC).isoformat()

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


MAX_ACK_KIDS = 64


class KeyAck(BaseModel):
    """A live verifier's answer to ``<p>.verifiers.ping``: the key ids it trusts now. A new
    key starts signing once every verifier that answers lists it (``ledger.service.keycare``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verifier: Annotated[str, Field(pattern=NAME_PATTERN)]
    kids: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=MAX_ACK_KIDS)]
    keys_seq: Annotated[int, Field(ge=0)]

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


def receipt_subject(verifier_id: str, prefix: str = "ledger") -> str:
    return Subjects(prefix).receipt(verifier_id)


def receipts_stream_config(prefix: str = "ledger", replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=RECEIPTS_STREAM,
        subjects=[Subjects(prefix).receipts],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=RECEIPTS_MAX_AGE.total_seconds(),
        duplicate_window=120.0,
    )
