"""Fixtures for the integration tests that run the repository's own nats.conf."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from ledger.config import Settings
from ledger.streaming.connection import connect
from ledger.streaming.embedded import free_port
from tests.support.deploy import ConfServer, Secured, set_passwords


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Secured]:
    passwords = set_passwords(monkeypatch)
    server = ConfServer(store_dir=tmp_path / "js", port=free_port())
    server.start()
    try:
        yield Secured(server, passwords)
    finally:
        server.stop()


@pytest.fixture
async def ledger_up(secured: Secured, tmp_path: Path, services: Any) -> AsyncIterator[Settings]:
    """A ledger service running as the ``ledger`` user."""
    settings = Settings(
        nats_url=secured.url("ledger"),
        data_dir=tmp_path / "data",
        duplicate_window=timedelta(seconds=30),
    )
    await services.start(settings)
    yield settings


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    """A plain connection to the test's server (modules with setup of their own override it)."""
    conn = await connect(settings.nats_url, "test")
    yield conn
    await conn.drain()
