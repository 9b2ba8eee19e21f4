"""Wiring: the command service on NATS (queue group, request/reply) and its start-up."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import Counter, Histogram
from pydantic import BaseModel

from ledger.config import Settings
from ledger.contracts.commands import (
    LogoutRequest,
    RevokeAccessRequest,
    RevokeOwnSessionRequest,
    RevokeSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    SignOutOthersRequest,
    StartSessionRequest,
    StepUpRequest,
    fail,
    internal_error,
    ok,
    parse_request,
)
from ledger.contracts.subjects import Subjects, is_safe_reply
from ledger.domain.errors import LedgerError, Unavailable
from ledger.domain.refresh import TokenKeys
from ledger.retry import retry
from ledger.service.handlers import LedgerService, utcnow
from ledger.service.keycare import KeyCare
from ledger.service.keys import load_or_create_master, load_or_create_signing_key
from ledger.service.keyset import ServiceKeys
from ledger.service.signer import AccessTokenSigner
from ledger.streaming.connection import connect, flush_to_server
from ledger.streaming.keys import KeyFollower
from ledger.streaming.store import EventStore
from ledger.streaming.streams import ensure_streams
from ledger.telemetry import metrics, traces

log = logging.getLogger("ledger.service.app")
QUEUE_GROUP = "ledger-service"
MAX_IN_FLIGHT = 256

Req = TypeVar("Req", bound=BaseModel)


async def handle(
    model: type[Req], call: Callable[[Req], Awaitable[BaseModel]], body: bytes, command: str = "other"
) -> bytes:
    """Decode, run, encode: every outcome is a typed reply, never a silent drop."""
    outcome, began = "ok", time.perf_counter()
    try:
        return ok(await call(parse_request(model, body)))
    except LedgerError as err:
        outcome = err.code
        return fail(err)
    except Exception as exc:
        outcome = "internal_error"
        return internal_error(log, "handling a command", exc)
    finally:
        _answered(command, outcome).inc()
        _timed(command).observe(time.perf_counter() - began)


@functools.cache  # bounded: commands x outcomes (error codes), both fixed sets
def _answered(command: str, outcome: str) -> Counter:
    """The labelled counter child, looked up once: ``labels()`` costs ~2% of a rotation."""
    return metrics.COMMANDS.labels(command, outcome)


@functools.cache
def _timed(command: str) -> Histogram:
    return metrics.COMMAND_SECONDS.labels(command)


Route = tuple[str, type[BaseModel], Callable[..., Awaitable[BaseModel]]]


def command_routes(service: LedgerService) -> list[Route]:
    """The command table: (name on ``<prefix>.cmd.<name>``, request model, handler)."""
    return [
        ("start", StartSessionRequest, service.start_session),
        ("rotate", RotateRequest, service.rotate),
        ("revoke", RevokeSessionRequest, service.revoke_session),
        ("logout", LogoutRequest, service.logout),
        ("revoke_user", RevokeUserRequest, service.revoke_user),
        ("step_up", StepUpRequest, service.step_up),
        ("revoke_own", RevokeOwnSessionRequest, service.revoke_own),
        ("sign_out_others", SignOutOthersRequest, service.sign_out_others),
        ("revoke_access", RevokeAccessRequest, service.revoke_access),
    ]


class CommandServer:
    """The command responder: one queue subscription per command (group ``ledger-service``),
    each request answered by its own task, at most ``MAX_IN_FLIGHT`` at once per instance.

    Plain nats-py, not a FastStream subscriber: measured on the same machine, FastStream's
    per-message machinery cost 0.2-0.6 ms of CPU per request against ~10 us here, more than
    a whole rotation's own work (``bench/`` and the README's performance notes). FastStream
    still describes the same commands for AsyncAPI.

    A request whose reply subject is not an inbox is refused unanswered: the answer would go
    out with this service's permissions (reply-subject injection).
    """

    def __init__(self, nc: NATS, service: LedgerService, settings: Settings) -> None:
        self.nc, self.settings = nc, settings
        self.routes = command_routes(service)
        self.subjects = Subjects(settings.subject_prefix)
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    async def start(self) -> CommandServer:
        for name, model, call in self.routes:
            cb = self._receiver(name, model, call)
            self._subs.append(await self.nc.subscribe(self.subjects.command(name), queue=QUEUE_GROUP, cb=cb))
        await flush_to_server(self.nc)  # the server has them before anyone is told we are up
        return self

    def _receiver(
        self, name: str, model: type[BaseModel], call: Callable[..., Awaitable[BaseModel]]
    ) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            if not is_safe_reply(msg.reply, self.settings.reply_prefixes):
                log.warning(
                    "command refused: its reply subject is not an inbox (%d chars)", len(msg.reply or "")
                )
                metrics.COMMANDS.labels(name, "reply_refused").inc()
                return
            await self._slots.acquire()  # back-pressure: the subscription waits, nothing is dropped here
            task = asyncio.create_task(self._answer(msg, name, model, call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return receive

    async def _answer(
        self, msg: Msg, name: str, model: type[BaseModel], call: Callable[..., Awaitable[BaseModel]]
    ) -> None:
        try:
            with traces.server_span(msg.subject, msg.headers):  # continues the caller's trace
                reply = await handle(model, call, msg.data, name)
            with contextlib.suppress(nats.errors.Error):  # the caller's retry gets the same answer
                await self.nc.publish(msg.reply, reply)
        finally:
            self._slots.release()

    async def stop(self, grace: float = 5.0) -> None:
        """Take no new request, let the ones in flight answer (up to ``grace`` seconds)."""
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._subs.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        for task in self._tasks:
            task.cancel()


async def build_service(
    settings: Settings, nc: NATS, *, deadline: float = 30.0, clock: Callable[[], datetime] = utcnow
) -> LedgerService:
    """Keys from disk, the stream ensured and the public key published.

    Retried until ``deadline``: on a fresh cluster the stream may still be electing
    its leader when the service starts.
    """
    store = EventStore(nc, settings)
    keys = TokenKeys(load_or_create_master(settings.keys_path))
    signing = load_or_create_signing_key(settings.keys_path, settings.algorithm, settings.key_passphrase)
    bootstrap = AccessTokenSigner(
        signing, issuer=settings.issuer, audience=settings.audience, ttl=settings.access_ttl
    )
    follower = KeyFollower(nc, settings)
    signer = ServiceKeys(follower, settings, bootstrap)
    service = LedgerService(store, keys, signer, settings, clock=clock, ring=follower.ring)

    async def bootstrap_keys() -> LedgerService:
        await ensure_streams(nc, settings)
        await follower.stop()
        await follower.start()  # every key event so far: which key signs now
        if not follower.book.added:  # no trusted key yet (forged ones do not count)
            await service.publish_signing_key(follower.seq)
            await follower.stop()
            await follower.start()
        return service

    not_ready = (Unavailable, nats.errors.Error, TimeoutError)
    try:
        await retry(bootstrap_keys, on=not_ready, deadline=deadline, delay=0.5, what="ledger stream")
    except not_ready as err:
        raise Unavailable(f"the ledger stream is not available: {type(err).__name__}") from None
    await hear_revoke_alls(nc, service)
    return service


async def hear_revoke_alls(nc: NATS, service: LedgerService) -> None:
    """Every revoke-all appended (by any instance) makes this one forget that user's rotation
    hints (``ledger.service.heads``): their cut is old. Core NATS, no consumer: a hint is only
    ever a saved read, so a missed message costs a refused rotation's event, never a verdict."""
    subjects = service.subjects

    async def forget(msg: Msg) -> None:
        if (sub := subjects.user_of(msg.subject)) is not None:
            service.heads.forget_user(sub)

    await nc.subscribe(subjects.user_revocations(), cb=forget)


async def run_service(settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """Run one ledger service instance until ``stop`` is set."""
    nc = await connect(settings.nats_url, "ledger-service")
    try:
        service = await build_service(settings, nc)
        commands = await CommandServer(nc, service, settings).start()
        assert isinstance(service.signer, ServiceKeys)
        care = asyncio.create_task(KeyCare(nc, settings, service.signer, service.clock).run(stop))
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            care.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await care
            await _quietly(commands.stop())
    finally:
        await _quietly(nc.drain())
        if not nc.is_closed:
            await nc.close()


async def _quietly(closing: Awaitable[object]) -> None:
    """Shut down even while NATS is away: draining needs the server, closing does not."""
    try:
        await asyncio.wait_for(closing, 10)
    except (nats.errors.Error, TimeoutError, OSError) as err:
        log.info("closed without draining: %s", type(err).__name__)
