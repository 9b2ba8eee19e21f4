"""Helpers for the edge tests: run components, forge tokens, measure revoke-to-reject delays."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import jwt

from consumers.broadcast import run_broadcaster
from consumers.edge.verifier import EdgeVerifier, TokenRejected
from ledger.config import Settings
from ledger.service.keys import SigningKey, load_or_create_signing_key
from session_ledger.runtime import start

Runner = Callable[[Settings, asyncio.Event, asyncio.Event | None], Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def running(runner: Runner, settings: Settings, timeout: float = 15.0) -> AsyncIterator[None]:
    """Run a component runner until the block exits (the runtime's own start-and-wait)."""
    stop = asyncio.Event()
    task = await start(getattr(runner, "__name__", "component"), runner, settings, stop, timeout=timeout)
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def broadcaster(settings: Settings) -> AsyncIterator[None]:
    async with running(run_broadcaster, settings):
        yield


@contextlib.asynccontextmanager
async def verifier(settings: Settings, **options: Any) -> AsyncIterator[EdgeVerifier]:
    v = await EdgeVerifier(settings, **options).start()
    try:
        yield v
    finally:
        await v.close()


def service_key(settings: Settings) -> SigningKey:
    """The ledger service's signing key, read from its key directory (tests forge with it)."""
    return load_or_create_signing_key(settings.keys_path, settings.algorithm, None)


def claims_for(settings: Settings, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.issuer,
        "aud": settings.audience,
        "sub": "mallory",
        "sid": "A" * 22,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "scope": "read",
        "sst": now,
        "ssq": 1,
    }
    claims.update(overrides)
    return claims


def sign(key: SigningKey, claims: dict[str, Any], **headers: Any) -> str:
    base = {"kid": key.kid, "typ": "at+jwt"}
    base.update(headers)
    return jwt.encode(claims, key.private, algorithm=key.alg, headers=base)


def reason_of(v: EdgeVerifier, token: str) -> str | None:
    try:
        v.verify(token)
    except TokenRejected as err:
        return err.reason.value
    return None


async def until_rejected(
    v: EdgeVerifier, token: str, *, limit: float = 5.0, ignore: tuple[str, ...] = ()
) -> tuple[float, str]:
    """Poll until ``token`` is rejected for a reason not in ``ignore``; (monotonic time, reason)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        reason = reason_of(v, token)
        if reason is not None and reason not in ignore:
            return time.monotonic(), reason
        await asyncio.sleep(0.0005)
    raise AssertionError(f"token still not rejected after {limit}s")


async def retry(call: Callable[[], Coroutine[Any, Any, Any]], *, attempts: int = 40) -> Any:
    """Retry a ledger call while NATS/JetStream is coming back (bounded)."""
    for attempt in range(attempts):
        try:
            return await call()
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)
    return None


def report(capsys: Any, line: str) -> None:
    with capsys.disabled():
        print(f"\n[edge] {line}", flush=True)


def kid_of(token: str) -> str:
    """The key id in an access token's header (unverified: for assertions only)."""
    return str(jwt.get_unverified_header(token)["kid"])
