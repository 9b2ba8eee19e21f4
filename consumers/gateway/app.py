"""The gateway's HTTP server: routes, error answers, headers on every response, and the
component runner for ``session-ledger gateway`` / ``up``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS

from consumers.gateway import backend, browser, discovery, oauth, selfservice
from consumers.gateway.clients import load_registry
from consumers.gateway.context import GATEWAY, Gateway
from consumers.gateway.cookies import PATH as COOKIE_PATH
from consumers.gateway.errors import OAuthError, error_response
from consumers.gateway.headers import cors_headers, security_headers
from consumers.gateway.ratelimit import RateLimiter
from consumers.gateway.responses import json_response
from consumers.gateway.settings import GatewaySettings
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import Unavailable
from ledger.streaming.connection import connect
from ledger.streaming.keys import KeyFollower
from ledger.telemetry.endpoint import http_metrics, serve_app

log = logging.getLogger("consumers.gateway")

MAX_LINE = 8 * 1024
MAX_FIELD = 8 * 1024
MAX_HEADERS = 64
MAX_BODY = 64 * 1024  # aiohttp's own ceiling; every route reads at most its own, smaller limit


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure is a JSON answer: OAuth errors as RFC 6749 section 5.2, HTTP errors by
    status, anything unexpected as 500 with its type in the log and nothing in the body."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except OAuthError as err:
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response(
            {"error": exc.reason.lower().replace(" ", "_")}, status=exc.status, headers=_allow(exc)
        )
    except Exception as exc:
        route = request.match_info.route.resource
        where = route.canonical if route is not None else "?"  # never the raw path: it is the caller's
        log.error("gateway error on %s: %s", where, type(exc).__name__)
        return json_response({"error": "server_error"}, status=500)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def build_app(gateway: Gateway) -> web.Application:
    limits = {"max_field_size": MAX_FIELD, "max_line_size": MAX_LINE, "max_headers": MAX_HEADERS}
    app = web.Application(
        client_max_size=MAX_BODY, handler_args=limits, middlewares=[http_metrics("gateway"), errors]
    )
    app[GATEWAY] = gateway
    app.on_response_prepare.append(_headers)
    for module in (oauth, browser, selfservice, backend, discovery):
        module.register(app)
    return app


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every answer; on the cookie flow's answers (errors included) CORS for
    an allowed origin, so the application can read a 401 or 403 instead of a network error."""
    config = request.app[GATEWAY].config
    response.headers.pop("Server", None)
    response.headers.update(security_headers(response.headers, hsts=config.hsts))
    if request.path.startswith(COOKIE_PATH + "/"):
        cors = cors_headers(request.headers.get("Origin"), config.cors_origins, credentials=True)
        if "Access-Control-Allow-Origin" in cors:  # the app may read a step-up challenge, a wait
            cors["Access-Control-Expose-Headers"] = "WWW-Authenticate, Retry-After"
        response.headers.update(cors)


async def open_gateway(
    settings: Settings, config: GatewaySettings, clock: Callable[[], float] = time.time
) -> Gateway:
    """Connect as the ``gateway`` user, follow the key events, load the client registry."""
    nc = await connect(settings.nats_url, "ledger-gateway")
    try:
        keys = await follow_keys(nc, settings)
    except BaseException:
        await nc.close()
        raise
    ledger = LedgerClient(nc, prefix=settings.subject_prefix, timeout=settings.request_timeout)
    limiter = RateLimiter(nc, settings.subject_prefix, config.rate_window.total_seconds())
    registry = load_registry(config.clients_path(settings.data_dir))
    return Gateway(settings, config, ledger, keys, limiter, registry, clock)


async def follow_keys(nc: NATS, settings: Settings, deadline: float = 60.0) -> KeyFollower:
    """The key events, once the ledger service has made its stream (a gateway started first
    waits for it, as an edge does, rather than failing)."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            return await KeyFollower(nc, settings).start()
        except (nats.errors.Error, TimeoutError) as err:
            if time.monotonic() > give_up:
                raise Unavailable(
                    "no ledger stream to read keys from: is the ledger service running?"
                ) from err
            log.info("gateway waiting for the ledger stream (%s)", type(err).__name__)
            await asyncio.sleep(0.5)


async def close_gateway(gateway: Gateway) -> None:
    await gateway.keys.stop()
    if not gateway.ledger.nc.is_closed:
        await gateway.ledger.nc.drain()


async def serve(gateway: Gateway) -> web.AppRunner:
    return (await serve_app(build_app(gateway), gateway.config.listen, "LEDGER_GATEWAY_LISTEN / --listen"))[0]


async def run_gateway(
    settings: Settings,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    *,
    config: GatewaySettings | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Runner for ``session-ledger up`` / ``session-ledger gateway`` (``clock``: rate windows,
    ``expires_in``; tests pin it)."""
    gateway = await open_gateway(settings, config or GatewaySettings(), clock)
    try:
        runner = await serve(gateway)
        try:
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await close_gateway(gateway)
