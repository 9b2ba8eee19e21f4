"""Fixtures: a real nats-server with JetStream on a free loopback port, and ledger services."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

import ledger.client
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.connection import connect
from ledger.streaming.embedded import NatsServer, free_port
from ledger.streaming.store import EventStore
from tests.support.services import ServiceRunner

# HYPOTHESIS_PROFILE=shake: 20x the examples for every property test that does not fix its own
# count, to find a case before a CI run does (two were found at random in one day).
hypothesis_settings.register_profile("shake", max_examples=2000, deadline=None)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PATIENCE = 30.0
"""Seconds a test's request waits for an answer. CI runs on busy shared machines where a
5 s answer (production's default) was seen missed while the whole box stalled; a test that
means to exercise a timeout passes its own."""


@pytest.fixture(autouse=True, scope="session")
def patient_requests() -> Iterator[None]:
    """Raise the request deadline for in-process clients and for every CLI/service subprocess."""
    before = ledger.client.DEFAULT_TIMEOUT
    ledger.client.DEFAULT_TIMEOUT = PATIENCE
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEDGER_REQUEST_TIMEOUT", str(PATIENCE))
        yield
    ledger.client.DEFAULT_TIMEOUT = before


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "js", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings_for(nats_server: NatsServer, tmp_path: Path) -> Any:
    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "nats_url": nats_server.url,
            "data_dir": tmp_path / "data",
            "duplicate_window": timedelta(seconds=30),
        }
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def settings(settings_for: Any) -> Settings:
    return settings_for()  # type: ignore[no-any-return]


@pytest.fixture
async def services(nats_server: NatsServer) -> AsyncIterator[ServiceRunner]:
    """Depends on ``nats_server`` so that services stop before the server does."""
    runner = ServiceRunner()
    yield runner
    await runner.stop_all()


@pytest.fixture
async def service(services: ServiceRunner, settings: Settings) -> ServiceRunner:
    await services.start(settings)
    return services


@pytest.fixture
async def client(service: ServiceRunner, settings: Settings) -> AsyncIterator[LedgerClient]:
    c = await LedgerClient.connect(settings.nats_url)
    yield c
    await c.close()


@pytest.fixture
async def store(nats_server: NatsServer, settings: Settings) -> AsyncIterator[EventStore]:
    """A reader/writer on the ledger stream, independent of any service instance."""
    nc = await connect(settings.nats_url, "test-store")
    event_store = EventStore(nc, settings)
    await event_store.ensure_stream()
    yield event_store
    await nc.drain()
