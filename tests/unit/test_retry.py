"""The one retry helper: bounded, retries only what it is told to, never swallows cancellation."""

from __future__ import annotations

import asyncio

import pytest

from ledger.retry import Stopped, pause, poll_until, retry


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "done"


async def test_retries_the_listed_errors_until_it_succeeds() -> None:
    call = Flaky(3)
    assert await retry(call, on=ConnectionError, attempts=5, delay=0) == "done"
    assert call.calls == 4


async def test_gives_up_after_the_attempts_with_the_last_error() -> None:
    call = Flaky(10)
    with pytest.raises(ConnectionError, match="failure 3"):
        await retry(call, on=ConnectionError, attempts=3, delay=0)
    assert call.calls == 3


async def test_a_deadline_bounds_it_too() -> None:
    call = Flaky(10**9)
    with pytest.raises(ConnectionError):
        await retry(call, on=ConnectionError, deadline=0.2, delay=0.01)
    assert 2 <= call.calls < 10**9


async def test_other_errors_are_not_retried() -> None:
    call = Flaky(1, error=ValueError)
    with pytest.raises(ValueError):
        await retry(call, on=ConnectionError, attempts=5, delay=0)
    assert call.calls == 1


async def test_an_unbounded_retry_must_say_so() -> None:
    with pytest.raises(ValueError, match="bound"):
        await retry(Flaky(0), on=ConnectionError)
    assert await retry(Flaky(2), on=ConnectionError, forever=True, delay=0) == "done"


async def test_backoff_grows_up_to_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    await retry(Flaky(5), on=ConnectionError, attempts=6, delay=0.1, backoff=2, max_delay=0.5)
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])


async def test_stop_ends_the_retrying_with_stopped() -> None:
    stop = asyncio.Event()
    call = Flaky(10**9)
    task = asyncio.create_task(retry(call, on=ConnectionError, stop=stop, delay=30))
    await poll_until(lambda: call.calls >= 1, deadline=10)
    stop.set()
    with pytest.raises(Stopped) as caught:
        await asyncio.wait_for(task, 10)
    assert isinstance(caught.value.__cause__, ConnectionError)


async def test_cancellation_wins_even_when_a_library_turns_it_into_a_timeout() -> None:
    """nats-py answers a cancelled request with its own TimeoutError: a retry loop that
    catches it would go on for ever after Ctrl-C."""
    started = asyncio.Event()
    calls = 0

    async def request_like_nats_py() -> None:
        nonlocal calls
        calls += 1
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise TimeoutError from None

    task = asyncio.create_task(retry(request_like_nats_py, on=TimeoutError, forever=True, delay=0))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert calls == 1


async def test_cancellation_while_waiting_between_tries_propagates() -> None:
    call = Flaky(10**9)
    task = asyncio.create_task(retry(call, on=ConnectionError, forever=True, delay=30))
    await poll_until(lambda: call.calls >= 1, deadline=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def test_poll_until_takes_sync_and_async_checks() -> None:
    seen = []

    async def later() -> bool:
        seen.append(1)
        return len(seen) >= 3

    await poll_until(later, deadline=10, interval=0)
    assert len(seen) == 3
    with pytest.raises(TimeoutError, match="never"):
        await poll_until(lambda: False, deadline=0.05, interval=0.01, what="never")


async def test_pause_returns_early_when_stopped() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await pause(30, stop) is True
    assert await pause(0, None) is False
