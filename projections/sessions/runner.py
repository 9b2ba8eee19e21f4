"""Keep the sessions bucket current: a durable JetStream pull consumer, in stream order.

Per batch: apply each event (each write carries its stream seq), save the checkpoint,
then ack. A crash anywhere in between leaves unacked events that come back and are
no-ops. On start the durable consumer is re-created at checkpoint + 1, so events are
applied strictly in stream order (a gap is waited for, never skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors as jserr
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from ledger.config import Settings
from ledger.contracts.subjects import Subjects
from ledger.domain.errors import LedgerError, Unavailable
from ledger.domain.events import RecordedEvent, decode_event
from ledger.domain.refresh import TokenKeys
from ledger.jetstream.connection import connect
from ledger.jetstream.store import EventStore
from ledger.service.keys import load_or_create_master
from projections.sessions.queries import QueryServer, SessionQueries
from projections.sessions.store import Pointer, SessionStore, live_bucket

log = logging.getLogger("projections.sessions.runner")
Hook = Callable[[str, int], Awaitable[None]]
TRANSIENT = (nats.errors.Error, TimeoutError, LedgerError)


@dataclass(frozen=True)
class RunnerOptions:
    batch: int = 256
    ack_wait: float = 30.0
    fetch_timeout: float = 0.5
    pointer_check: float = 1.0
    restart_delay: float = 1.0


async def _no_hook(point: str, seq: int) -> None:
    return None


def consumer_name(bucket: str) -> str:
    return f"projection_{bucket}"


class SessionsRunner:
    """Applies the stream to the live bucket. ``hook(point, seq)`` lets tests inject faults."""

    def __init__(
        self, nc: NATS, settings: Settings, *, options: RunnerOptions | None = None, hook: Hook | None = None
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.settings = settings
        self.options = options or RunnerOptions()
        self.hook = hook or _no_hook
        self.events_filter = Subjects(settings.subject_prefix).events
        self.store: SessionStore | None = None
        self.applied = 0
        self._sub: JetStreamContext.PullSubscription | None = None
        self._next_pointer_check = 0.0

    async def start(self) -> None:
        await self._wait_for_stream()
        await self._attach(await live_bucket(self.js, self.settings))

    async def _wait_for_stream(self, attempts: int = 60) -> None:
        """The ledger service creates the stream; a projector may not (nats.conf denies it)."""
        for _ in range(attempts):
            try:
                await self.js.stream_info(self.settings.stream)
                return
            except jserr.NotFoundError:
                await asyncio.sleep(0.5)
        raise Unavailable(f"stream {self.settings.stream} does not exist; start the ledger service first")

    async def _attach(self, bucket: str) -> None:
        self.store = await SessionStore.open(self.js, bucket, replicas=self.settings.replicas)
        self.applied = await self.store.checkpoint()
        name = consumer_name(bucket)
        with contextlib.suppress(jserr.NotFoundError):
            await self.js.delete_consumer(self.settings.stream, name)
        await self.js.add_consumer(self.settings.stream, self._consumer_config(name))
        self._sub = await self.js.pull_subscribe_bind(durable=name, stream=self.settings.stream)
        log.info("sessions projection on %s from seq %d", bucket, self.applied + 1)

    def _consumer_config(self, name: str) -> ConsumerConfig:
        start = self.applied + 1
        return ConsumerConfig(
            durable_name=name,
            filter_subject=self.events_filter,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait,
            max_ack_pending=self.options.batch * 4,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
            opt_start_seq=start if start > 1 else None,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Apply batches until ``stop``; a non-transient error propagates (the caller restarts)."""
        while not stop.is_set():
            await self.step(stop)

    async def step(self, stop: asyncio.Event | None = None) -> int:
        await self._maybe_switch()
        try:
            msgs = await self._subscription().fetch(self.options.batch, timeout=self.options.fetch_timeout)
        except (nats.errors.TimeoutError, TimeoutError):  # nats-py raises either when idle
            return 0
        return await self._handle(msgs, stop)

    def _subscription(self) -> JetStreamContext.PullSubscription:
        assert self._sub is not None, "start() first"
        return self._sub

    async def _handle(self, msgs: list[Msg], stop: asyncio.Event | None) -> int:
        """Write the batch's in-order prefix, checkpoint, ack; nak what must come again."""
        ready = await self._in_order(msgs)
        before = self.applied
        try:
            await self._store().apply_batch([rec for _, rec in ready if rec is not None])
            for seq, _ in ready:
                await self.hook("written", seq)
                self.applied = seq
                if stop is not None and stop.is_set():
                    break  # stopping mid-batch: the rest comes again, to whoever runs next
        except TRANSIENT as exc:
            log.warning("sessions projection: batch not applied yet: %s", exc)
            await _nak(msgs, delay=0.05)
            return 0
        if self.applied > before:
            await self._store().save_checkpoint(self.applied)
            await self.hook("checkpointed", self.applied)
        settled = [m for m in msgs if m.metadata.sequence.stream <= self.applied]
        for msg in settled:
            await msg.ack()
        await _nak([m for m in msgs if m.metadata.sequence.stream > self.applied], delay=0.05)
        return self.applied - before

    async def _in_order(self, msgs: list[Msg]) -> list[tuple[int, RecordedEvent | None]]:
        """The batch's new events that follow the checkpoint without a hole, in order.

        Stops at a gap (an earlier event is still pending redelivery): never skip one.
        Undecodable messages come back as None: they advance the sequence, nothing else.
        """
        expected, ready = self.applied + 1, []
        for msg in sorted(msgs, key=lambda m: m.metadata.sequence.stream):
            seq = msg.metadata.sequence.stream
            if seq < expected:
                continue  # a redelivery of something applied: ack it, change nothing
            if seq > expected and not await self._gap_is_real(seq, expected):
                break
            ready.append((seq, _recorded(msg, seq)))
            expected = seq + 1
        return ready

    async def _gap_is_real(self, seq: int, expected: int) -> bool:
        """True when no event lies between ``expected`` and ``seq`` (nothing to wait for)."""
        body = json.dumps({"seq": expected, "next_by_subj": self.events_filter}).encode()
        subject = f"$JS.API.DIRECT.GET.{self.settings.stream}"
        reply = await self.nc.request(subject, body, timeout=self.settings.request_timeout)
        found = (reply.headers or {}).get("Nats-Sequence")
        return found is None or int(found) >= seq

    async def _maybe_switch(self) -> None:
        """Follow the pointer after a rebuild: continue on the fresh bucket, drop the old one."""
        now = time.monotonic()
        if now < self._next_pointer_check:
            return
        self._next_pointer_check = now + self.options.pointer_check
        name, _ = await (await Pointer.open(self.js, self.settings)).read()
        old = self._store().bucket
        if name is None or name == old:
            return
        await self._detach()
        await self._attach(name)
        log.info("sessions projection switched from %s to %s", old, name)
        try:
            await self.js.delete_consumer(self.settings.stream, consumer_name(old))
            await self.js.delete_key_value(old)
        except jserr.NotFoundError:
            pass

    async def _detach(self) -> None:
        if self._sub is not None:
            await self._subscription().unsubscribe()
            self._sub = None

    async def close(self) -> None:
        """Leave the durable consumer on the server: unacked events stay pending for the next run."""
        await self._detach()

    def _store(self) -> SessionStore:
        assert self.store is not None, "start() first"
        return self.store

    def current(self) -> SessionStore:
        """The live bucket's store (queries call this per request, so they follow rebuilds)."""
        return self._store()

    async def lag(self) -> int:
        return max(0, await EventStore(self.nc, self.settings).last_seq() - self.applied)


def _recorded(msg: Msg, seq: int) -> RecordedEvent | None:
    try:
        event = decode_event(msg.data)
    except (ValidationError, ValueError):
        log.error("sessions projection: seq %d is not a ledger event; skipped", seq)
        return None
    return RecordedEvent(event=event, seq=seq, subject=msg.subject, time=msg.metadata.timestamp)


async def _nak(msgs: list[Msg], delay: float | None = None) -> None:
    for msg in msgs:
        await msg.nak(delay=delay)


async def run_sessions(
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    options: RunnerOptions | None = None,
) -> None:
    """The projection process: keep the bucket current and answer ``<prefix>.q.*`` until ``stop``."""
    nc = await connect(settings.nats_url, "ledger-sessions")
    try:
        runner = SessionsRunner(nc, settings, options=options)
        await runner.start()
        keys = TokenKeys(load_or_create_master(settings.keys_path))
        server = QueryServer(nc, SessionQueries(runner.current, keys, settings), settings.subject_prefix)
        await server.start()
        if ready is not None:
            ready.set()
        try:
            await _keep_running(runner, stop)
        finally:
            await server.stop()
            await runner.close()
    finally:
        await nc.drain()


async def _keep_running(runner: SessionsRunner, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await runner.run(stop)
        except Exception:
            log.exception("sessions projection failed; restarting from its checkpoint")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), runner.options.restart_delay)
            with contextlib.suppress(Exception):
                await runner.close()
                await runner.start()
