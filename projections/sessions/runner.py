"""Keep the sessions bucket current: a durable JetStream pull consumer, in stream order.

Per batch: apply each event (each write carries its stream seq), save the checkpoint,
then ack. A crash anywhere in between leaves unacked events that come back and are
no-ops. The durable consumer is (re-)created at checkpoint + 1 (``CheckpointedConsumer``),
so events are applied strictly in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.js.errors as jserr
from nats.aio.client import Client as NATS

from ledger.config import Settings
from ledger.contracts.subjects import Subjects
from ledger.domain.errors import LedgerError, Unavailable
from ledger.domain.refresh import TokenKeys
from ledger.retry import pause, raise_if_cancelling, retry
from ledger.service.keys import load_or_create_master
from ledger.streaming.connection import connect
from ledger.streaming.consumer import TRANSIENT as CONSUMER_TRANSIENT
from ledger.streaming.consumer import CheckpointedConsumer, ConsumerSpec, Delivery
from ledger.streaming.keys import KeyFollower
from ledger.streaming.store import EventStore
from projections.sessions.queries import QueryServer, SessionQueries
from projections.sessions.store import Pointer, SessionStore, live_bucket

log = logging.getLogger("projections.sessions.runner")
Hook = Callable[[str, int], Awaitable[None]]
TRANSIENT = (*CONSUMER_TRANSIENT, LedgerError)


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
    """Applies the stream to the live bucket. ``hook(point, seq)`` lets tests inject faults.

    The pull/ack/redelivery loop is the generic ``CheckpointedConsumer``; this class is
    its sink (write the batch, then the checkpoint) plus following the bucket pointer.
    """

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
        self.consumer: CheckpointedConsumer | None = None
        self._stop: asyncio.Event | None = None
        self._next_pointer_check = 0.0

    @property
    def applied(self) -> int:
        return self.consumer.applied if self.consumer is not None else 0

    async def start(self) -> None:
        await self._wait_for_stream()
        await self._attach(await live_bucket(self.js, self.settings))

    async def _wait_for_stream(self, attempts: int = 60) -> None:
        """The ledger service creates the stream; a projector may not (nats.conf denies it)."""
        try:
            await retry(
                lambda: self.js.stream_info(self.settings.stream), on=jserr.NotFoundError, attempts=attempts,
                delay=0.5, what="ledger stream",
            )  # fmt: skip
        except jserr.NotFoundError:
            raise Unavailable(
                f"stream {self.settings.stream} does not exist; start the ledger service first"
            ) from None

    async def _attach(self, bucket: str) -> None:
        self.store = await SessionStore.open(self.js, bucket, replicas=self.settings.replicas)
        spec = ConsumerSpec(
            stream=self.settings.stream,
            durable=consumer_name(bucket),
            filters=(self.events_filter,),
            batch=self.options.batch,
            ack_wait=self.options.ack_wait,
            name="sessions",  # the bucket's name changes with every rebuild, the metric's does not
        )
        self.consumer = CheckpointedConsumer(self.nc, spec, self, timeout=self.settings.request_timeout)
        await self.consumer.bind()
        log.info("sessions projection on %s from seq %d", bucket, self.applied + 1)

    # -- the sink -------------------------------------------------------------------------

    async def position(self) -> int:
        return await self._store().checkpoint()

    async def apply(self, batch: Sequence[Delivery]) -> int:
        """Write the batch's records (each carries its seq), then the checkpoint."""
        done = self.applied
        await self._store().apply_batch([rec for d in batch if (rec := d.recorded()) is not None])
        for delivery in batch:
            await self.hook("written", delivery.seq)
            done = delivery.seq
            if self._stop is not None and self._stop.is_set():
                break  # stopping mid-batch: the rest comes again, to whoever runs next
        if done > self.applied:
            await self._store().save_checkpoint(done)
            await self.hook("checkpointed", done)
        return done

    # -- running --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Apply batches until ``stop``; a non-transient error propagates (the caller restarts)."""
        while not stop.is_set():
            await self.step(stop)

    async def step(self, stop: asyncio.Event | None = None) -> int:
        self._stop = stop or self._stop
        await self._maybe_switch()
        try:
            return await self._consumer().step(self.options.fetch_timeout)
        except TRANSIENT as exc:
            raise_if_cancelling()
            log.warning("sessions projection: batch not applied yet: %s", type(exc).__name__)
            await pause(0.05, self._stop)
            with contextlib.suppress(*TRANSIENT):
                await self._consumer().bind()  # the batch comes again from the checkpoint + 1
            return 0

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
        await self._consumer().close()
        await self._attach(name)
        log.info("sessions projection switched from %s to %s", old, name)
        with contextlib.suppress(jserr.NotFoundError):
            await self.js.delete_consumer(self.settings.stream, consumer_name(old))
        await (await SessionStore.open(self.js, old)).empty()  # kept by name, emptied

    async def close(self) -> None:
        """Leave the durable consumer on the server: unacked events stay pending for the next run."""
        if self.consumer is not None:
            await self.consumer.close()

    def _store(self) -> SessionStore:
        assert self.store is not None, "start() first"
        return self.store

    def _consumer(self) -> CheckpointedConsumer:
        assert self.consumer is not None, "start() first"
        return self.consumer

    def current(self) -> SessionStore:
        """The live bucket's store (queries call this per request, so they follow rebuilds)."""
        return self._store()

    async def lag(self) -> int:
        return max(0, await EventStore(self.nc, self.settings).last_seq() - self.applied)


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
        follower = await KeyFollower(nc, settings).start()
        queries = SessionQueries(runner.current, keys, settings, lambda: follower.ring)
        server = QueryServer(nc, queries, settings.subject_prefix)
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
            raise_if_cancelling()
            log.exception("sessions projection failed; restarting from its checkpoint")
            await pause(runner.options.restart_delay, stop)
            with contextlib.suppress(Exception):
                await runner.close()
                await runner.start()
