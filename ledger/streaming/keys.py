"""Follow the ledger's key events into a ``KeyRing`` (trust) and a ``KeyBook`` (lifecycle).

One follower per process that signs or verifies outside the edge: the service (which key
signs now) and the sessions projection (introspection). A key event whose proof no trusted
key signed is logged and ignored, so a forged ``SigningKeyAdded`` changes nothing here.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import jwt
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from ledger.config import Settings
from ledger.contracts.subjects import Subjects
from ledger.domain.access import KeyNotTrusted, KeyRing
from ledger.domain.events import SigningKeyAdded, SigningKeyRetired, decode_event
from ledger.domain.keys import KeyBook
from ledger.retry import poll_until
from ledger.streaming.consumer import ordered_config

log = logging.getLogger("ledger.streaming.keys")


class KeyFollower:
    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.settings = settings
        self.ring = KeyRing()
        self.book = KeyBook()
        self.seq = 0
        self._sub: Any = None

    def apply(self, event: SigningKeyAdded | SigningKeyRetired) -> None:
        """Fold one key event in; an untrusted one is ignored (logged by kid only)."""
        try:
            if isinstance(event, SigningKeyAdded):
                self.ring.add_event(event)
                self.book.added.setdefault(event.kid, event)
            else:
                self.ring.retire_event(event)
                self.book.retired.add(event.kid)
        except (KeyNotTrusted, ValueError, KeyError, jwt.PyJWTError):
            log.warning("ignoring a key event for %s that no trusted key signed", event.kid)

    async def start(self, timeout: float = 15.0) -> KeyFollower:
        """Replay every key event, then follow; returns once caught up with the stream."""
        subject = Subjects(self.settings.subject_prefix).keys_filter()
        js = self.nc.jetstream(timeout=self.settings.request_timeout)
        target = await self._last_seq(subject)
        self._sub = await js.subscribe(
            subject, stream=self.settings.stream, cb=self._on_msg, ordered_consumer=True,
            config=ordered_config(deliver_policy=DeliverPolicy.ALL),
        )  # fmt: skip
        await poll_until(
            lambda: self.seq >= target, deadline=timeout, interval=0.01, what="key events replayed"
        )
        return self

    async def _last_seq(self, subject: str) -> int:
        api = f"$JS.API.DIRECT.GET.{self.settings.stream}.{subject}"
        msg = await self.nc.request(api, b"", timeout=self.settings.request_timeout)
        return int((msg.headers or {}).get("Nats-Sequence", 0))

    async def _on_msg(self, msg: Msg) -> None:
        self.seq = max(self.seq, msg.metadata.sequence.stream)
        try:
            event = decode_event(msg.data)
        except (ValidationError, ValueError):
            log.error("stream seq %d is not a ledger event; skipped", self.seq)
            return
        if isinstance(event, SigningKeyAdded | SigningKeyRetired):
            self.apply(event)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
