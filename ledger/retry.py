"""The one retry policy: bounded, with backoff, and never swallowing cancellation.

Every "try, wait, try again" in the project goes through ``retry``; every "wait until
something holds" through ``poll_until``; every pause of a run loop through ``pause``.

Cancellation always wins. ``asyncio.CancelledError`` is not an ``Exception`` and is never
caught, and some libraries turn a cancellation into an exception of their own (nats-py
raises its ``TimeoutError`` when a request is cancelled): after any failure, a task that
is being cancelled re-raises ``CancelledError`` instead of trying again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("ledger.retry")
Errors = type[Exception] | tuple[type[Exception], ...]


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library turned into an ordinary exception."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep ``seconds``, or less when ``stop`` is set; True when stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _check_bounds(
    attempts: int | None, deadline: float | None, stop: asyncio.Event | None, forever: bool
) -> None:
    if attempts is None and deadline is None and stop is None and not forever:
        raise ValueError("retry needs a bound: attempts, deadline or stop (or forever=True)")
    if attempts is not None and attempts < 1:
        raise ValueError("attempts must be >= 1")


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    on: Errors,
    attempts: int | None = None,
    deadline: float | None = None,
    stop: asyncio.Event | None = None,
    forever: bool = False,
    delay: float = 0.25,
    backoff: float = 1.0,
    max_delay: float = 5.0,
    what: str = "",
) -> T:
    """``await call()`` until it returns, retrying only on ``on``.

    Bounded by ``attempts``, ``deadline`` (seconds from now), ``stop`` (set: give up), or,
    only when asked for with ``forever=True``, by cancellation alone. Giving up re-raises
    the last error. Waits ``delay`` between tries, multiplied by ``backoff`` each time.
    """
    _check_bounds(attempts, deadline, stop, forever)
    give_up_at = None if deadline is None else time.monotonic() + deadline
    tries, wait = 0, delay
    while True:
        tries += 1
        try:
            return await call()
        except on as err:
            raise_if_cancelling()
            if _exhausted(tries, attempts, give_up_at):
                raise
            log.debug("%s: %s; try %d again in %.2fs", what or "retry", type(err).__name__, tries + 1, wait)
            if stop is not None and (stop.is_set() or await pause(wait, stop)):
                raise Stopped(what) from err
        if stop is None:
            await asyncio.sleep(wait)
        wait = min(wait * backoff, max_delay)


def _exhausted(tries: int, attempts: int | None, give_up_at: float | None) -> bool:
    if attempts is not None and tries >= attempts:
        return True
    return give_up_at is not None and time.monotonic() >= give_up_at


class Stopped(Exception):
    """``stop`` was set before ``retry`` succeeded (the last error is its ``__cause__``)."""


async def poll_until(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    deadline: float,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Wait until ``check()`` holds (it may be async); ``TimeoutError`` after ``deadline`` s."""
    give_up_at = time.monotonic() + deadline
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() >= give_up_at:
            raise TimeoutError(f"{what} not reached within {deadline:g}s")
        await asyncio.sleep(interval)
