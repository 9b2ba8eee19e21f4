"""Forward-auth sidecar: the HTTP contract of nginx ``auth_request``, Traefik ``forwardAuth``
and Envoy ``ext_authz`` (HTTP service), backed by one ``EdgeVerifier``.

``<any method> /auth[/...]`` with ``Authorization: Bearer <token>``:
  200 + ``X-Auth-Subject`` / ``X-Auth-Session`` / ``X-Auth-Scopes`` for a valid token, and
  ``X-Auth-Acr`` / ``X-Auth-Amr`` / ``X-Auth-Time`` (empty without an authentication context),
  so the upstream can ask for a step-up (RFC 9470);
  with ``X-Required-Acr: aal2 aal3`` and/or ``X-Required-Max-Age: <seconds>`` (set by the proxy
  per location, never by a client: the proxy overwrites them), a valid token below that level
  or authenticated too long ago gets 401 + the RFC 9470 challenge
  ``Bearer error="insufficient_user_authentication", acr_values="...", max_age="..."``;
  a malformed requirement is the proxy's error: 500, failing closed;
  401 + ``WWW-Authenticate: Bearer error="invalid_token"`` for any other token (one opaque
  answer, the reason goes to the log and the /healthz counters), or without ``error``
  when no token was sent (RFC 6750 section 3);
  503 + ``Retry-After`` when the verifier is stale beyond its limit and fails closed:
  the token may be fine, the verifier cannot tell (every gateway denies a 5xx).
``GET /healthz``: 200 while serving, 503 while failing closed; JSON with the staleness.
Only ``/auth`` paths authorize, so an Envoy ``path_prefix`` can never reach ``/healthz``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from consumers.edge.verifier import AccessClaims, EdgeVerifier, TokenRejected
from ledger.config import Settings
from ledger.domain.stepup import ERROR, BadRequirement, parse_requirement, shortfall
from ledger.telemetry.endpoint import http_metrics, serve_app

log = logging.getLogger("consumers.edge.sidecar")

MAX_FIELD = 128 * 1024  # a bigger header is refused by the parser (400), a big token by us (401)
MAX_LINE = 8 * 1024
MAX_HEADERS = 64
MAX_BODY = 16 * 1024  # the body is never read; forward-auth requests carry none
BEARER_RE = re.compile(r"^Bearer +([A-Za-z0-9._~+/=-]+) *$", re.IGNORECASE)
HEADER_SAFE = "@.:_-+~!$&'()*,;=/"  # everything else is percent-encoded in X-Auth-* values
VERIFIER_KEY = web.AppKey("verifier", EdgeVerifier)
REQUIRED_ACR = "X-Required-Acr"  # from the proxy only (nginx proxy_set_header in the auth location)
REQUIRED_MAX_AGE = "X-Required-Max-Age"


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    match = BEARER_RE.match(authorization)
    return match.group(1) if match else ""


def challenge(realm: str, *, invalid: bool) -> str:
    extra = ', error="invalid_token"' if invalid else ""
    return f'Bearer realm="{realm}"{extra}'


async def authorize(request: web.Request) -> web.Response:
    verifier = request.app[VERIFIER_KEY]
    realm = verifier.settings.audience
    try:
        required = parse_requirement(request.headers.get(REQUIRED_ACR), request.headers.get(REQUIRED_MAX_AGE))
    except BadRequirement:
        log.error("malformed %s/%s from the proxy: denying", REQUIRED_ACR, REQUIRED_MAX_AGE)
        return web.json_response({"error": "server_error"}, status=500, headers={"Cache-Control": "no-store"})
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        return _deny(realm, invalid=False)
    try:
        claims = verifier.verify(token)
    except TokenRejected as err:
        if err.reason.value == "stale":
            return web.json_response({"error": "unavailable"}, status=503, headers={"Retry-After": "1"})
        log.info("token rejected: %s", err.reason.value)
        return _deny(realm, invalid=True)
    short = shortfall(required, acr=claims.acr, auth_time=claims.auth_time, now=verifier.clock(), realm=realm)
    if short is not None:
        log.info("step-up required: %s", short.reason)
        return web.Response(
            status=401,
            text=f'{{"error":"{ERROR}"}}',
            content_type="application/json",
            headers={"WWW-Authenticate": short.challenge, "Cache-Control": "no-store"},
        )
    headers = {
        "X-Auth-Subject": quote(claims.sub, safe=HEADER_SAFE),
        "X-Auth-Session": claims.sid,
        "X-Auth-Scopes": quote(" ".join(claims.scopes), safe=HEADER_SAFE + " "),
        "Cache-Control": "no-store",
    }
    if claims.client_id:
        headers["X-Auth-Client"] = quote(claims.client_id, safe=HEADER_SAFE)
    headers.update(auth_headers(claims))
    return web.Response(status=200, headers=headers)


def auth_headers(claims: AccessClaims) -> dict[str, str]:
    """The authentication context for the upstream, always sent (empty when the token has none):
    a proxy copying a header only when the auth answer has it would otherwise let a client's own
    ``X-Auth-Acr: aal3`` through to an upstream that decides step-ups on it."""
    return {
        "X-Auth-Acr": quote(claims.acr or "", safe=HEADER_SAFE),
        "X-Auth-Amr": quote(" ".join(claims.amr), safe=HEADER_SAFE + " "),
        "X-Auth-Time": "" if claims.auth_time is None else str(claims.auth_time),
    }


def _deny(realm: str, *, invalid: bool) -> web.Response:
    body = '{"error":"invalid_token"}' if invalid else '{"error":"unauthorized"}'
    return web.Response(
        status=401,
        text=body,
        content_type="application/json",
        headers={"WWW-Authenticate": challenge(realm, invalid=invalid), "Cache-Control": "no-store"},
    )


async def healthz(request: web.Request) -> web.Response:
    health = request.app[VERIFIER_KEY].health()
    return web.json_response(health, status=200 if health["serving"] else 503)


def build_app(verifier: EdgeVerifier) -> web.Application:
    limits = {"max_field_size": MAX_FIELD, "max_line_size": MAX_LINE, "max_headers": MAX_HEADERS}
    app = web.Application(client_max_size=MAX_BODY, handler_args=limits, middlewares=[http_metrics("edge")])
    app[VERIFIER_KEY] = verifier
    app.on_response_prepare.append(_hide_server)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/auth", authorize)
    app.router.add_route("*", "/auth/{tail:.*}", authorize)
    return app


async def _hide_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.pop("Server", None)  # no version banner for scanners


async def serve(verifier: EdgeVerifier, listen: str) -> web.AppRunner:
    return (await serve_app(build_app(verifier), listen, "LEDGER_EDGE_LISTEN / --listen"))[0]


async def run_edge(
    settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None, **options: Any
) -> None:
    """Runner for ``session-ledger up`` / ``session-ledger edge``: verifier + sidecar."""
    verifier = await EdgeVerifier(settings, **options).start()
    try:
        runner = await serve(verifier, settings.edge_listen)
        try:
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await verifier.close()
