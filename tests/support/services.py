"""Ledger service instances run in the test's event loop, stopped at teardown."""

from __future__ import annotations

import asyncio
import contextlib

from ledger.config import Settings
from ledger.service.app import run_service


class ServiceRunner:
    """Starts ledger service instances in this event loop; stops them all at teardown."""

    def __init__(self) -> None:
        self.tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(self, settings: Settings) -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_service(settings, stop, ready))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raise the start-up error
        waiter.cancel()
        self.tasks.append((stop, task))
        return stop, task

    async def stop_all(self) -> None:
        for stop, _ in self.tasks:
            stop.set()
        for _, task in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
