"""Propagation receipts: each edge verifier says when it applied each revocation notice.

Shared contract with the analytics (keep exactly): stream ``LEDGER_RECEIPTS``, subject
``<prefix>.receipt.<verifier_id>``, one JSON receipt per notice applied per verifier::

    {"verifier": str, "event_id": str, "revoke_seq": int, "kind": "session"|"user"|"key",
     "sid": str|null, "sub": str|null, "kid": str|null, "applied_at": ISO-8601 UTC}

``event_id`` and ``revoke_seq`` are the revocation event's id and its LEDGER stream
sequence, so the analytics joins a receipt to the revoke request it answers.
Receipts carry ids only, never a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer

log = logging.getLogger("consumers.edge.receipts")

RECEIPTS_STREAM = "LEDGER_RECEIPTS"
RECEIPTS_MAX_AGE = timedelta(days=90)
VERIFIER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
QUEUE_LIMIT = 10_000

NoticeKind = Literal["session", "user", "key"]


class Receipt(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    verifier: Annotated[str, Field(pattern=VERIFIER_ID_RE.pattern)]
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


def receipt_subject(verifier_id: str, prefix: str = "ledger") -> str:
    if not VERIFIER_ID_RE.fullmatch(verifier_id):
        raise ValueError("verifier id must be 1-64 characters of [A-Za-z0-9_-]")
    return f"{prefix}.receipt.{verifier_id}"


def receipts_stream_config(prefix: str = "ledger", replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=RECEIPTS_STREAM,
        subjects=[f"{prefix}.receipt.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=RECEIPTS_MAX_AGE.total_seconds(),
        duplicate_window=120.0,
    )


async def ensure_receipts_stream(nc: NATS, prefix: str = "ledger", replicas: int = 1) -> None:
    """Create the stream if missing; never rewrite a config someone else chose."""
    js = nc.jetstream()
    try:
        await js.stream_info(RECEIPTS_STREAM)
    except NotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # created concurrently
            await js.add_stream(receipts_stream_config(prefix, replicas))


class ReceiptPublisher:
    """Publishes receipts off the verification path: a bounded queue, sent in order,
    retried while NATS is away (``Nats-Msg-Id`` makes a retry harmless)."""

    def __init__(self, nc: NATS, verifier_id: str, prefix: str = "ledger") -> None:
        self.nc = nc
        self.subject = receipt_subject(verifier_id, prefix)
        self.queue: asyncio.Queue[Receipt] = asyncio.Queue(QUEUE_LIMIT)
        self.sent = 0
        self.dropped = 0

    def submit(self, receipt: Receipt) -> None:
        try:
            self.queue.put_nowait(receipt)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        """Send until cancelled."""
        js = self.nc.jetstream(timeout=2.0)
        while True:
            receipt = await self.queue.get()
            while not await self._send(js, receipt):
                await asyncio.sleep(0.5)
            self.sent += 1

    async def _send(self, js: nats.js.JetStreamContext, receipt: Receipt) -> bool:
        msg_id = f"{receipt.verifier}:{receipt.event_id}"
        try:
            await js.publish(self.subject, receipt.encode(), headers={"Nats-Msg-Id": msg_id})
        except nats.errors.NoRespondersError:  # no stream yet (or JetStream restarting)
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await ensure_receipts_stream(self.nc, self.subject.split(".receipt.")[0])
            return False
        except (nats.errors.Error, TimeoutError) as err:
            log.debug("receipt not sent yet: %s", type(err).__name__)
            return False
        return True
