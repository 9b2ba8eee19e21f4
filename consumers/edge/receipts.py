"""Publishing propagation receipts (the model and stream live in ``ledger.contracts.receipts``)."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import nats.errors
from nats.aio.client import Client as NATS

from ledger.contracts.receipts import Receipt, receipt_subject
from ledger.retry import retry

log = logging.getLogger("consumers.receipts")
QUEUE_LIMIT = 10_000
NOT_SENT = (nats.errors.Error, TimeoutError)


class ReceiptPublisher:
    """Publishes receipts off the verification path: a bounded queue, sent in order,
    retried while NATS is away (``Nats-Msg-Id`` makes a retry harmless)."""

    def __init__(self, nc: NATS, verifier_id: str, prefix: str = "ledger") -> None:
        self.nc = nc
        self.prefix = prefix
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
            # in order, until it is stored: no stream yet (the ledger creates it) or NATS away
            await retry(
                partial(self._send, js, receipt), on=NOT_SENT, forever=True, delay=0.5, what="receipt"
            )
            self.sent += 1

    async def _send(self, js: nats.js.JetStreamContext, receipt: Receipt) -> None:
        msg_id = f"{receipt.verifier}:{receipt.event_id}"
        await js.publish(self.subject, receipt.encode(), headers={"Nats-Msg-Id": msg_id})
