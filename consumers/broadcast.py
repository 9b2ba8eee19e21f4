"""The revocation broadcaster: LEDGER revocation events -> compact notices on LEDGER_REVOCATIONS.

A durable pull consumer reads only the revoking subjects. Each event's notice is
published with ``Nats-Msg-Id`` = the event id (a redelivery is deduplicated by the
server; beyond the duplicate window a repeat is harmless, verifiers apply notices
idempotently) and ``Nats-TTL`` = what is left of the longest access-token life.
The source event is acked only after the notice publish is acked, so a crash in
between means a redelivery, never a lost revocation. Several instances may share the
durable consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from ledger.config import Settings
from ledger.contracts.notices import (
    Notice,
    notice_for,
    notice_subject,
    notice_ttl,
    notices_stream_config,
)
from ledger.contracts.subjects import NOTICES_STREAM, Subjects
from ledger.domain.events import RecordedEvent, decode_event
from ledger.jetstream.connection import connect
from ledger.jetstream.store import EventStore

log = logging.getLogger("consumers.broadcast")
DURABLE = "ledger-revocation-broadcast"
BATCH = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


class Broadcaster:
    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        ack_wait: float = 30.0,
    ) -> None:
        self.nc = nc
        self.ack_wait = ack_wait
        self.settings = settings
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.clock = clock
        self.published = 0

    async def setup(self) -> None:
        """Streams and the durable consumer, all idempotent."""
        await EventStore(self.nc, self.settings).ensure_stream()
        config = notices_stream_config(
            self.settings.access_ttl, self.settings.subject_prefix, self.settings.replicas
        )
        try:
            await self.js.stream_info(NOTICES_STREAM)
        except NotFoundError:
            await self.js.add_stream(config)
        else:
            await self.js.update_stream(config)
        await self.js.add_consumer(self.settings.stream, self._consumer_config())

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=DURABLE,
            name=DURABLE,
            filter_subjects=Subjects(self.settings.subject_prefix).revoking(),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=1024,
        )

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        sub = await self.js.pull_subscribe_bind(durable=DURABLE, stream=self.settings.stream)
        if ready is not None:
            ready.set()
        try:
            while not stop.is_set():
                for msg in await self._fetch(sub):
                    await self.handle(msg)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _fetch(self, sub: Any) -> list[Msg]:
        try:
            return list(await sub.fetch(BATCH, timeout=1.0))
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        except nats.errors.Error as err:  # disconnected, JetStream restarting...
            log.info("broadcaster fetch failed (%s); retrying", type(err).__name__)
            await asyncio.sleep(0.5)
            return []

    async def handle(self, msg: Msg) -> None:
        """Publish the notice, then ack the source; on failure leave it for redelivery."""
        try:
            recorded = recorded_from(msg)
        except (ValidationError, ValueError):
            log.error("undecodable event at LEDGER seq %s: skipped", msg.metadata.sequence.stream)
            await msg.term()
            return
        try:
            notice = notice_for(recorded)
            if notice is not None:
                await self.publish(notice)
            await msg.ack()
        except (nats.errors.Error, TimeoutError) as err:
            log.warning("notice for LEDGER seq %s not published yet: %s", recorded.seq, type(err).__name__)
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=0.5)

    async def publish(self, notice: Notice) -> None:
        """Publish and wait for the stream's ack (a duplicate ack is success)."""
        ttl = notice_ttl(notice, self.settings.access_ttl, now=self.clock())
        subject = notice_subject(notice, self.settings.subject_prefix)
        headers = {"Nats-Msg-Id": notice.event_id}
        await self.js.publish(subject, notice.encode(), headers=headers, msg_ttl=ttl.total_seconds())
        self.published += 1


def recorded_from(msg: Msg) -> RecordedEvent:
    meta = msg.metadata
    return RecordedEvent(event=decode_event(msg.data), seq=meta.sequence.stream, subject=msg.subject)


async def run_broadcaster(
    settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    """Runner for ``session-ledger up`` / ``session-ledger broadcast``."""
    nc = await connect(settings.nats_url, "ledger-broadcast")
    try:
        broadcaster = Broadcaster(nc, settings)
        await broadcaster.setup()
        await broadcaster.run(stop, ready)
    finally:
        await nc.drain()
