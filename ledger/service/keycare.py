"""Key care: the lifecycle steps no operator should have to remember.

Every service instance runs it; each step is one key event signed by the active key and
appended with compare-and-set on the key subjects, so N instances take each step once:

- a published key signs as soon as every live verifier acknowledges it (they answer
  ``<p>.verifiers.ping`` with the kids they trust), at the latest at its ``activates_at``;
- a superseded key retires once the longest access token it signed has expired;
- with ``LEDGER_KEY_ROTATION`` (e.g. ``30d``) a new key is published when the active one
  has signed that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from ledger.config import Settings
from ledger.contracts.receipts import KeyAck
from ledger.contracts.subjects import Subjects
from ledger.domain.errors import ConcurrencyConflict, Unavailable
from ledger.domain.events import KeyEvent, SigningKeyActivated, SigningKeyRetired
from ledger.domain.ids import new_event_id
from ledger.domain.keys import activated_statement, retired_statement
from ledger.service.keyops import append_key_event, longest_token, rotate_key
from ledger.service.keys import sign_statement
from ledger.service.keyset import ServiceKeys

log = logging.getLogger("ledger.service.keycare")
ACK_WINDOW = 0.5  # seconds to collect answers: a verifier slower than this is not live
MAX_ACKS = 4096


async def gather_acks(nc: NATS, subjects: Subjects, window: float = ACK_WINDOW) -> list[KeyAck]:
    """Ask every live verifier which keys it trusts: every answer (two verifiers configured
    with one id are still two answers)."""
    answers: list[KeyAck] = []

    async def on_answer(msg: Msg) -> None:
        if len(answers) < MAX_ACKS:
            with contextlib.suppress(ValidationError, ValueError):
                answers.append(KeyAck.model_validate_json(msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_answer)
    try:
        await nc.publish(subjects.verifiers_ping, b"", reply=inbox)
        await asyncio.sleep(window)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return answers


class KeyCare:
    def __init__(
        self, nc: NATS, settings: Settings, keys: ServiceKeys, clock: Callable[[], datetime]
    ) -> None:
        self.nc, self.settings, self.keys, self.clock = nc, settings, keys, clock
        self.subjects = Subjects(settings.subject_prefix)

    async def step(self) -> str | None:
        """Take at most one lifecycle step; a description of it, or None."""
        now, book = self.clock(), self.keys.follower.book
        for pending in book.pending(now):
            if pending.kid in book.acknowledged:
                continue
            acks = await gather_acks(self.nc, self.subjects)
            if any(pending.kid not in ack.kids for ack in acks):
                return None  # a live verifier lacks it yet: ask again next time
            proof = self._sign(activated_statement(pending.kid), now)
            await self._append(SigningKeyActivated(
                event_id=new_event_id(), occurred_at=self.clock(), kid=pending.kid,
                verifiers=len(acks), proof=proof,
            ))  # fmt: skip
            return f"activated {pending.kid}: {len(acks)} live verifier(s) have it"
        for kid in book.retirable(now, longest_token(self.settings)):
            proof = self._sign(retired_statement(kid), now)
            await self._append(
                SigningKeyRetired(
                    event_id=new_event_id(), occurred_at=now, kid=kid, reason="expired", proof=proof
                )
            )
            return f"retired {kid}: no token it signed is alive"
        if book.rotation_due(now, self.settings.key_rotation):
            delay, seen = self.settings.edge_max_staleness, self.keys.follower.seq  # decided on this state
            added = await rotate_key(self.nc, self.settings, now=now, activate_in=delay, seen=seen)
            return f"rotated: published {added.kid} (scheduled)"
        return None

    def _sign(self, statement: bytes, now: datetime) -> str:
        return sign_statement(statement, self.keys.current(now).key)

    async def _append(self, event: KeyEvent) -> None:
        await append_key_event(self.nc, self.settings, event, self.keys.follower.seq)

    async def run(self, stop: asyncio.Event) -> None:
        """Step every ``key_maintenance_interval`` until ``stop``; a lost race is no error."""
        interval = self.settings.key_maintenance_interval.total_seconds()
        while not stop.is_set():
            try:
                done = await self.step()
                if done:
                    log.info("key care: %s", done)
            except ConcurrencyConflict:
                log.debug("key care: another instance took this step")
            except (Unavailable, nats.errors.Error, TimeoutError) as err:
                log.info("key care: skipped (%s)", type(err).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
