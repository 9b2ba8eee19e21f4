"""The JetStream event store passes the same contract as the in-memory one, on a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ledger.config import Settings
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from tests.support.store_contract import StoreContract


class TestJetStreamStore(StoreContract):
    @pytest.fixture
    async def store(self, settings: Settings) -> AsyncIterator[EventStore]:
        nc = await connect(settings.nats_url, "test-contract")
        store = EventStore(nc, settings)
        await store.ensure_stream()
        yield store
        await nc.drain()
