"""Wiring: the command service as a FastStream NATS app (queue group, request/reply)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import nats.errors
from faststream.message import StreamMessage
from faststream.nats import NatsBroker
from nats.aio.client import Client as NATS
from pydantic import BaseModel

from ledger.config import Settings
from ledger.contracts.commands import (
    LogoutRequest,
    RevokeAccessRequest,
    RevokeSessionRequest,
    RevokeUserRequest,
    RotateRequest,
    StartSessionRequest,
    fail,
    internal_error,
    ok,
    parse_request,
)
from ledger.contracts.subjects import Subjects, is_safe_reply
from ledger.domain.errors import LedgerError, Unavailable
from ledger.domain.refresh import TokenKeys
from ledger.service.handlers import LedgerService, utcnow
from ledger.service.keys import load_or_create_master, load_or_create_signing_key
from ledger.service.keyset import ServiceKeys
from ledger.service.signer import AccessTokenSigner
from ledger.streaming.connection import broker_options, connect
from ledger.streaming.keys import KeyFollower
from ledger.streaming.store import EventStore
from ledger.streaming.streams import ensure_streams

log = logging.getLogger("ledger.service.app")
QUEUE_GROUP = "ledger-service"
MAX_IN_FLIGHT = 256

Req = TypeVar("Req", bound=BaseModel)


async def handle(model: type[Req], call: Callable[[Req], Awaitable[BaseModel]], body: bytes) -> bytes:
    """Decode, run, encode: every outcome is a typed reply, never a silent drop."""
    try:
        return ok(await call(parse_request(model, body)))
    except LedgerError as err:
        return fail(err)
    except Exception as exc:
        return internal_error(log, "handling a command", exc)


def build_broker(service: LedgerService, settings: Settings) -> NatsBroker:
    # Per-message logging roughly halves request/reply throughput: keep it off.
    broker = NatsBroker(
        **broker_options(settings.nats_url), logger=None, graceful_timeout=5.0, apply_types=False
    )
    subjects = Subjects(settings.subject_prefix)
    for name, model, call in command_routes(service):
        _route(broker, subjects.command(name), model, call, settings.reply_prefixes)
    return broker


Route = tuple[str, type[BaseModel], Callable[..., Awaitable[BaseModel]]]


def command_routes(service: LedgerService) -> list[Route]:
    """The command table: (name on ``<prefix>.cmd.<name>``, request model, handler)."""
    return [
        ("start", StartSessionRequest, service.start_session),
        ("rotate", RotateRequest, service.rotate),
        ("revoke", RevokeSessionRequest, service.revoke_session),
        ("logout", LogoutRequest, service.logout),
        ("revoke_user", RevokeUserRequest, service.revoke_user),
        ("revoke_access", RevokeAccessRequest, service.revoke_access),
    ]


REFUSED = b"\x00refused"  # the decoder's verdict on a request that must not be answered


def inbox_only(prefixes: tuple[str, ...]) -> Callable[[StreamMessage[Any]], Awaitable[bytes]]:
    """A decoder that hands the body over undecoded (our own bounded validation answers every
    input), unless the reply subject is not an inbox: then nothing runs and nothing is
    published, since the answer would go out with this service's permissions."""

    async def decode(msg: StreamMessage[Any]) -> bytes:
        if is_safe_reply(msg.reply_to, prefixes):
            return bytes(msg.body)
        log.warning("command refused: its reply subject is not an inbox (%d chars)", len(msg.reply_to or ""))
        msg.reply_to = ""  # FastStream publishes an answer only when there is a reply subject
        return REFUSED

    return decode


def _route(
    broker: NatsBroker,
    subject: str,
    model: type[BaseModel],
    call: Callable[..., Awaitable[BaseModel]],
    prefixes: tuple[str, ...],
) -> None:
    decoder = inbox_only(prefixes)

    @broker.subscriber(subject, queue=QUEUE_GROUP, max_workers=MAX_IN_FLIGHT, decoder=decoder)
    async def _handler(body: bytes) -> bytes | None:
        if body is REFUSED:
            return None
        return await handle(model, call, body)


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
    give_up = time.monotonic() + deadline
    while True:
        try:
            await ensure_streams(nc, settings)
            await service.publish_signing_key()
            await follower.stop()
            await follower.start()  # every key event so far: which key signs now
            return service
        except (Unavailable, nats.errors.Error, TimeoutError) as err:
            if time.monotonic() > give_up:
                raise Unavailable(f"the ledger stream is not available: {type(err).__name__}") from None
            log.info("stream not ready (%s); retrying", type(err).__name__)
            await asyncio.sleep(0.5)


async def run_service(settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """Run one ledger service instance until ``stop`` is set."""
    nc = await connect(settings.nats_url, "ledger-service")
    try:
        service = await build_service(settings, nc)
        broker = build_broker(service, settings)
        await broker.start()
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            await _quietly(broker.stop())
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
