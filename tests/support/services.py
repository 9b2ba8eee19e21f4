"""Ledger service instances run in the test's event loop, stopped at teardown."""

from __future__ import annotations

import asyncio
import contextlib

from ledger.config import Settings
from ledger.service.app import run_service
from session_ledger.runtime import start


class ServiceRunner:
    """Starts ledger service instances in this event loop; stops them all at teardown."""

    def __init__(self) -> None:
        self.tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(self, settings: Settings) -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        task = await start("ledger-service", run_service, settings, stop, timeout=15)
        self.tasks.append((stop, task))
        return stop, task

    async def stop_all(self) -> None:
        for stop, _ in self.tasks:
            stop.set()
        for _, task in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
