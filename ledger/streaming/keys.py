"""Follow the ledger's key events into a ``KeyRing`` (trust) and a ``KeyBook`` (lifecycle).

One follower per process that signs or verifies outside the edge: the service (which key
signs now) and the sessions projection (introspection). A key event whose proof no trusted
key signed is logged and ignored, so a forged ``SigningKeyAdded`` changes nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from ledger.domain.errors import ConfigError
from ledger.domain.events import (
    KeyEvent,
    SigningKeyActivated,
    SigningKeyAdded,
    SigningKeyRetired,
    decode_event,
)
from ledger.domain.keys import KeyBook
from ledger.streaming.consumer import ordered_config

log = logging.getLogger("ledger.streaming.keys")


MAX_ROOT_KEY_BYTES = 16_384


def trust_ring(settings: Settings) -> KeyRing:
    """The verifier's starting trust: the operator's root key when configured, else empty
    (trust on first use of the ledger's first key)."""
    if settings.root_key is None:
        return KeyRing()
    try:
        raw = settings.root_key.read_bytes()[: MAX_ROOT_KEY_BYTES + 1]
        if len(raw) > MAX_ROOT_KEY_BYTES:
            raise ValueError("too large")
        jwk = json.loads(raw)
        if not isinstance(jwk, dict) or "d" in jwk or "p" in jwk:
            raise ValueError("not a public JWK")
        return KeyRing.rooted({str(k): str(v) for k, v in jwk.items()})
    except (OSError, ValueError, jwt.PyJWTError) as err:
        raise ConfigError(f"root key {settings.root_key}: {err}") from None


def fold_key_event(ring: KeyRing, book: KeyBook, event: KeyEvent) -> bool:
    """Authenticate one key event against ``ring`` and fold it into both; False (and a log
    line naming the kid only) when no trusted key signed it."""
    try:
        if isinstance(event, SigningKeyAdded):
            ring.add_event(event)
        elif isinstance(event, SigningKeyActivated):
            ring.activate_event(event)
        else:
            ring.retire_event(event)
    except (KeyNotTrusted, ValueError, KeyError, jwt.PyJWTError):
        log.warning("ignoring a %s for %s that no trusted key signed", event.type, event.kid)
        return False
    book.apply(event)
    return True


class KeyFollower:
    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.settings = settings
        self.ring = trust_ring(settings)
        self.book = KeyBook()
        self.seq = 0
        self._sub: Any = None

    def apply(self, event: KeyEvent) -> None:
        """Fold one key event in; an untrusted one is ignored (logged by kid only)."""
        fold_key_event(self.ring, self.book, event)

    async def start(self, timeout: float = 15.0) -> KeyFollower:
        """Replay every key event, then follow; returns once caught up with the stream."""
        subject = Subjects(self.settings.subject_prefix).keys_filter()
        js = self.nc.jetstream(timeout=self.settings.request_timeout)
        target = await self._last_seq(subject)
        self._sub = await js.subscribe(
            subject, stream=self.settings.stream, cb=self._on_msg, ordered_consumer=True,
            config=ordered_config(deliver_policy=DeliverPolicy.ALL),
        )  # fmt: skip
        deadline = asyncio.get_running_loop().time() + timeout
        while self.seq < target:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("key events not replayed in time")
            await asyncio.sleep(0.01)
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
        if isinstance(event, SigningKeyAdded | SigningKeyActivated | SigningKeyRetired):
            self.apply(event)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
