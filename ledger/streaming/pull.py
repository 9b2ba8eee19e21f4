"""Batch pulls from a JetStream pull consumer, without nats-py's per-message timers.

``JetStreamContext.fetch`` waits for each message of a batch with its own
``asyncio.wait_for`` (a task and a timer per message); here a subscription callback
collects the batch and one event ends it: measured about 9x faster on this machine,
which matters when a projection replays a million events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ledger.domain.errors import Unavailable

PENDING_LIMIT = 1_000_000


class Puller:
    """One outstanding pull request at a time on a private inbox."""

    def __init__(self, nc: NATS, stream: str, durable: str) -> None:
        self.nc = nc
        self.api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = nc.new_inbox()
        self._sub: Any = None
        self._msgs: list[Msg] = []
        self._want = 0
        self._done = asyncio.Event()
        self._status: str | None = None

    async def start(self) -> Puller:
        self._sub = await self.nc.subscribe(
            self.inbox, cb=self._on_msg, pending_msgs_limit=PENDING_LIMIT, pending_bytes_limit=-1
        )
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def fetch(self, batch: int, *, wait: float | None = None) -> list[Msg]:
        """Up to ``batch`` messages: what is there now (``wait=None``), or whatever arrives
        within ``wait`` seconds. An empty list means none; a lost consumer raises."""
        self._msgs, self._want, self._status = [], batch, None
        self._done.clear()
        request: dict[str, Any] = {"batch": batch}
        if wait is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(wait * 1e9)
        reconnects = self.nc.stats["reconnects"]
        await self.nc.publish(self.api, json.dumps(request).encode(), reply=self.inbox)
        deadline = asyncio.get_running_loop().time() + (wait or 0) + 5.0
        while not self._done.is_set():  # server slow: return what arrived, pull again later
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self.nc.stats["reconnects"] != reconnects:
                break  # a reconnect lost the request on the server: nothing more comes for it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), min(left, 0.1))
        if self._status is not None and self._status not in ("404", "408") and not self._msgs:
            raise Unavailable(f"pull from {self.api} refused: status {self._status}")
        return self._msgs

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None and not msg.data:
            if status != "100":  # idle heartbeat: not an answer
                self._status = status
                self._done.set()
            return
        self._msgs.append(msg)
        if len(self._msgs) >= self._want:
            self._done.set()
