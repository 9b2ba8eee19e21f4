"""Run components until a signal: the one place that starts them and waits until ready.

A component is an async runner ``(settings, stop, ready) -> None``: it sets ``ready``
once it serves and returns after ``stop`` is set. ``session-ledger up`` runs several,
every single-component command (``service``, ``edge``, ``broadcast``, ``projections
run``, ``analytics run``) runs one, and tests use the same helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, NamedTuple

from ledger.config import Settings
from ledger.domain.errors import Unavailable
from ledger.streaming.connection import parse_url
from ledger.telemetry.endpoint import serve_if_enabled
from ledger.telemetry.logs import COMPONENT
from ledger.telemetry.metrics import COMPONENT_UP

Runner = Callable[[Settings, asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]
READY_TIMEOUT = 30.0


class Component(NamedTuple):
    name: str
    runner: Runner
    what: str  # a template: ``{s}`` is the Settings, so the banner prints real addresses
    role: str = "ledger"  # the NATS user it connects as (nats.conf / the embedded up)

    def describe(self, settings: Settings) -> str:
        return self.what.format(s=settings)


class Interrupted(KeyboardInterrupt):
    """Stopped by Ctrl-C (SIGINT): the CLI exits 130 after a clean shutdown. SIGTERM, an
    orchestrator's ordinary stop, ends cleanly with 0."""


def stop_on_signals(stop: asyncio.Event, received: list[int] | None = None) -> None:
    """SIGINT and SIGTERM set ``stop`` (the runners then shut down in order)."""
    loop = asyncio.get_running_loop()

    def on(sig: int) -> None:
        if received is not None:
            received.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on, sig)


async def start(
    name: str, runner: Runner, settings: Settings, stop: asyncio.Event, *, timeout: float = READY_TIMEOUT
) -> asyncio.Task[None]:
    """Start ``runner`` as a task and return once it is ready; its start-up error is raised."""
    ready = asyncio.Event()
    label = COMPONENT.set(name)  # the task copies the context: its log lines name the component
    try:
        task = asyncio.create_task(runner(settings, stop, ready), name=name)
    finally:
        COMPONENT.reset(label)
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()  # raises the start-up error; a runner that returns early is an error too
        raise Unavailable(f"{name} stopped during start-up")
    if not ready.is_set():
        stop.set()
        task.cancel()
        raise Unavailable(f"{name} did not become ready in {timeout:.0f}s")
    COMPONENT_UP.labels(name).set(1)
    return task


async def finish(tasks: Sequence[asyncio.Task[None]], timeout: float = 15.0) -> None:
    """Wait for stopped components, newest first (the edge before the service it follows)."""
    for task in reversed(tasks):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout)
        COMPONENT_UP.labels(task.get_name()).set(0)


def announce(line: str) -> None:
    """One line on stdout in one write: ``print`` writes the text and the newline separately
    when Python runs unbuffered (PYTHONUNBUFFERED), and the workers of ``service --workers``
    share one stdout, so two of them announcing at once interleaved ("ready: ...ready: ...")."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def run_components(
    settings: Settings,
    components: Sequence[Component],
    *,
    ready_line: str,
    each: bool = True,
    urls: Mapping[str, str] | None = None,
) -> None:
    """Start each component in order (as its role, when ``urls`` maps roles to NATS URLs),
    announce it, serve until a signal, stop them all."""
    stop, received = asyncio.Event(), list[int]()
    stop_on_signals(stop, received)
    tasks: list[asyncio.Task[None]] = []
    exposition = await serve_if_enabled(settings.metrics_listen)
    try:
        if exposition is not None:
            announce(f"{'metrics':<16} {exposition.url}")
        for c in components:
            own = settings if urls is None else settings.model_copy(update={"nats_url": urls[c.role]})
            tasks.append(await start(c.name, c.runner, own, stop))
            if each:
                announce(f"{c.name:<16} {c.describe(settings)}")
        announce(f"ready: {ready_line} (Ctrl-C to stop)")
        await stop.wait()
        announce("stopping...")
    finally:
        stop.set()
        await finish(tasks)
        if exposition is not None:
            await exposition.close()
    if signal.SIGINT in received:
        raise Interrupted


def run_one(component: Component, settings: Settings) -> None:
    """``asyncio.run`` one component until SIGINT/SIGTERM (the single-component commands)."""
    where = ", ".join(parse_url(settings.nats_url).servers)  # never the URL: it may hold a password
    line = f"{component.name}: {component.describe(settings)}; NATS {where}"
    asyncio.run(run_components(settings, [component], ready_line=line, each=False))
