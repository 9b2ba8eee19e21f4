"""The revocation broadcaster: LEDGER revocation events -> compact notices on LEDGER_REVOCATIONS.

A durable pull consumer (the generic ``CheckpointedConsumer``) reads only the revoking
subjects. Each event's notice is published with ``Nats-Msg-Id`` = the event id (a
redelivery is deduplicated by the server; beyond the duplicate window a repeat is
harmless, verifiers apply notices idempotently) and ``Nats-TTL`` = what is left of the
longest access-token life. The source event is acked only after the notice publish is acked, so a crash in
between means a redelivery, never a lost revocation. Several instances may share the
durable consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ledger.config import Settings
from ledger.contracts.notices import (
    Notice,
    notice_for,
    notice_subject,
    notice_ttl,
)
from ledger.contracts.subjects import Subjects
from ledger.domain.events import RecordedEvent, decode_event
from ledger.retry import pause
from ledger.streaming.connection import connect
from ledger.streaming.consumer import TRANSIENT, CheckpointedConsumer, ConsumerSpec, Delivery
from ledger.streaming.streams import ensure_streams
from ledger.telemetry import metrics

log = logging.getLogger("consumers.broadcast")
DURABLE = "ledger-revocation-broadcast"
HEARTBEAT_EVERY = 0.25  # seconds between liveness beats to the edges (an edge back from an outage
# fails closed until it hears one)
FETCH_WAIT = 1.0
BATCH = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


class Broadcaster:
    """The sink of a ``CheckpointedConsumer`` whose position is the server's ack floor."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
        ack_wait: float = 30.0,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.clock = clock
        self.published = 0
        spec = ConsumerSpec(
            stream=settings.stream,
            durable=DURABLE,
            filters=tuple(Subjects(settings.subject_prefix).revoking()),
            batch=BATCH,
            ack_wait=ack_wait,
            owns_position=False,
            name="broadcast",
        )
        self.consumer = CheckpointedConsumer(nc, spec, self, timeout=settings.request_timeout)

    async def setup(self) -> None:
        """Streams and the durable consumer, all idempotent."""
        await ensure_streams(self.nc, self.settings)
        await self.consumer.bind()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Until ``stop``; a deleted durable is re-created (``bind``) and resumes where it was."""
        if ready is not None:
            ready.set()
        beats = asyncio.create_task(self._heartbeats(stop))
        try:
            await self.consumer.run(stop, wait=FETCH_WAIT, retry=0.5)
        finally:
            beats.cancel()
            await self.consumer.close()

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        """Tell the edges we are alive, but only while the consumer loop goes through: edges
        fail closed when the broadcaster is silent longer than their staleness limit."""
        subject = Subjects(self.settings.subject_prefix).broadcaster_heartbeat
        while not stop.is_set():
            healthy_at = self.consumer.healthy_at
            if healthy_at is not None and time.monotonic() - healthy_at < 3 * FETCH_WAIT:
                with contextlib.suppress(*TRANSIENT):
                    await self.nc.publish(subject, json.dumps({"at": time.time()}).encode())
            await pause(HEARTBEAT_EVERY, stop)

    async def position(self) -> int:
        return 0  # the server's ack floor is the position

    async def apply(self, batch: Sequence[Delivery]) -> int:
        """Publish each notice (acked by the stream) in order; the last sequence handled."""
        done = 0
        for delivery in batch:
            recorded = delivery.recorded()
            notice = notice_for(recorded) if recorded is not None else None
            if notice is not None:
                try:
                    await self.publish(notice)
                except TRANSIENT as err:
                    log.warning(
                        "notice for LEDGER seq %s not published yet: %s", delivery.seq, type(err).__name__
                    )
                    return done  # this one and the rest are redelivered
                observe_notice(notice, delivery)
            done = delivery.seq
        return done

    async def publish(self, notice: Notice) -> None:
        """Publish and wait for the stream's ack (a duplicate ack is success)."""
        ttl = notice_ttl(notice, self.settings.access_ttl, now=self.clock())
        subject = notice_subject(notice, self.settings.subject_prefix)
        headers = {"Nats-Msg-Id": notice.event_id}
        await self.js.publish(subject, notice.encode(), headers=headers, msg_ttl=ttl.total_seconds())
        self.published += 1


def observe_notice(notice: Notice, delivery: Delivery) -> None:
    """Count the notice; its delay runs from the event stored in LEDGER to the notice's ack."""
    metrics.NOTICES.labels(notice.kind).inc()
    metrics.BROADCAST_DELAY.observe(max(0.0, time.time() - delivery.time_ns / 1e9))


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
