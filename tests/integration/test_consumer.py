"""The generic checkpointed consumer against a real server: order, exactly-once across
failures and restarts, stop mid-batch, a deleted durable, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest
from nats.aio.client import Client as NATS

from ledger.config import Settings
from ledger.domain.errors import Unavailable
from ledger.streaming.connection import connect
from ledger.streaming.consumer import CheckpointedConsumer, ConsumerSpec, Delivery

SUBJECT = "test.consumer"


class ListSink:
    """Applies by appending sequences; ``fail_at`` raises once when that seq comes."""

    def __init__(self, fail_at: int | None = None, stop_after: int | None = None) -> None:
        self.checkpoint = 0
        self.applied: list[int] = []
        self.fail_at, self.stop_after = fail_at, stop_after
        self.stop = asyncio.Event()

    async def position(self) -> int:
        return self.checkpoint

    async def apply(self, batch: Sequence[Delivery]) -> int:
        effect: list[int] = []
        for d in batch:
            if d.seq == self.fail_at:
                self.fail_at = None
                raise Unavailable("injected")  # nothing of this batch is kept
            effect.append(d.seq)
            if self.stop_after is not None and d.seq >= self.stop_after:
                self.stop.set()
                break
        if effect:  # the effect and the checkpoint together, like a transaction
            self.applied += effect
            self.checkpoint = effect[-1]
        return self.checkpoint


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    conn = await connect(settings.nats_url, "test-consumer")
    js = conn.jetstream()
    await js.add_stream(name="TEST", subjects=[f"{SUBJECT}.>"])
    for i in range(1, 301):
        await js.publish(f"{SUBJECT}.{i % 3}", str(i).encode())
    yield conn
    await conn.drain()


def spec(**changes: object) -> ConsumerSpec:
    base = {"stream": "TEST", "durable": "c1", "filters": (f"{SUBJECT}.>",), "batch": 64}
    return ConsumerSpec(**{**base, **changes})  # type: ignore[arg-type]


async def drain(consumer: CheckpointedConsumer, until: int) -> None:
    stop = asyncio.Event()

    async def watch() -> None:
        while consumer.applied < until:
            await asyncio.sleep(0.01)
        stop.set()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(consumer.run(stop, wait=0.2, retry=0.05), 20)
    await watcher


@pytest.mark.parametrize("prefetch", [False, True])
async def test_every_event_once_in_order_across_a_failure(nc: NATS, prefetch: bool) -> None:
    sink = ListSink(fail_at=130)
    consumer = CheckpointedConsumer(nc, spec(prefetch=prefetch), sink)
    await consumer.bind()
    await drain(consumer, 300)
    assert sink.applied == list(range(1, 301))  # the failed batch came again from 130, once


async def test_a_restart_resumes_after_the_checkpoint_and_a_stop_mid_batch(nc: NATS) -> None:
    sink = ListSink(stop_after=100)
    first = CheckpointedConsumer(nc, spec(), sink)
    await first.bind()
    await asyncio.wait_for(first.run(sink.stop, wait=0.2), 20)
    await first.close()
    assert sink.checkpoint == 100 and sink.applied == list(range(1, 101))
    sink.stop_after = None
    second = CheckpointedConsumer(nc, spec(), sink)  # a new process on the same checkpoint
    await second.bind()
    await drain(second, 300)
    assert sink.applied == list(range(1, 301))


async def test_filters_skip_other_subjects(nc: NATS) -> None:
    sink = ListSink()
    consumer = CheckpointedConsumer(nc, spec(filters=(f"{SUBJECT}.0",)), sink)
    await consumer.bind()
    await drain(consumer, 300)
    assert sink.applied == list(range(3, 301, 3))


async def test_server_held_position_survives_a_deleted_durable(nc: NATS) -> None:
    """The broadcaster's mode: someone deletes the durable; the consumer re-creates it."""
    sink = ListSink()
    consumer = CheckpointedConsumer(nc, spec(owns_position=False, durable="bc"), sink)
    await consumer.bind()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop, wait=0.2, retry=0.05))
    try:
        while len(sink.applied) < 300:
            await asyncio.sleep(0.01)
        await nc.jetstream().delete_consumer("TEST", "bc")
        await nc.jetstream().publish(f"{SUBJECT}.x", b"301")
        for _ in range(500):
            if 301 in sink.applied:
                break
            await asyncio.sleep(0.02)
        assert 301 in sink.applied  # re-created from the start: old ones again, harmless here
        assert (await nc.jetstream().consumer_info("TEST", "bc")).config.durable_name == "bc"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_cancellation_propagates(nc: NATS) -> None:
    consumer = CheckpointedConsumer(nc, spec(), ListSink())
    await consumer.bind()
    task = asyncio.create_task(consumer.run(asyncio.Event(), wait=0.2))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    with contextlib.suppress(Exception):
        await consumer.close()
