"""Publishing propagation receipts (the model and stream live in ``ledger.contracts.receipts``)."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.aio.client import Client as NATS

from ledger.contracts.receipts import Receipt, receipt_subject

log = logging.getLogger("consumers.receipts")
QUEUE_LIMIT = 10_000


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
            while not await self._send(js, receipt):
                await asyncio.sleep(0.5)
            self.sent += 1

    async def _send(self, js: nats.js.JetStreamContext, receipt: Receipt) -> bool:
        msg_id = f"{receipt.verifier}:{receipt.event_id}"
        try:
            await js.publish(self.subject, receipt.encode(), headers={"Nats-Msg-Id": msg_id})
        except nats.errors.NoRespondersError:  # no stream yet (the ledger creates it) or JetStream away
            return False
        except (nats.errors.Error, TimeoutError) as err:
            log.debug("receipt not sent yet: %s", type(err).__name__)
            return False
        return True
