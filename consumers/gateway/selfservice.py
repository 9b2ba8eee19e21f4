"""Self-service for a signed-in user: their sessions ("devices"), revoke one, sign out the others.

``GET /session/devices``, ``POST /session/devices/{sid}/revoke``, ``POST /session/sign-out-others``
are authenticated by the presenting access token (``Authorization: Bearer``), judged by the one
verifier through the ledger's introspection (signature, expiry, revoked session, user cut, revoked
``jti``): the user and the session are the token's ``sub`` and ``sid``, never a parameter. No
cookie is read, so there is no CSRF surface; CORS (allow-list) and the security headers apply as on
every ``/session/*`` answer. The two actions may require an authentication level
(``LEDGER_GATEWAY_SELF_SERVICE_ACR`` / ``_MAX_AGE``): a token below it gets the RFC 9470 challenge.
"""

from __future__ import annotations

import re

from aiohttp import web

from consumers.gateway.context import GATEWAY, is_refresh_token
from consumers.gateway.errors import OAuthError
from consumers.gateway.headers import cors_headers
from consumers.gateway.responses import json_response
from ledger.contracts.queries import Introspection
from ledger.domain.errors import BadRequest, LedgerError, SessionNotFound, Unavailable
from ledger.domain.ids import is_sid
from ledger.domain.stepup import ERROR as STEP_UP
from ledger.domain.stepup import shortfall

BEARER_RE = re.compile(r"^Bearer +([A-Za-z0-9._~+/=-]+) *$", re.IGNORECASE)
LISTED = {
    "sid", "client_id", "scopes", "started_at", "last_seen_at", "idle_expires_at", "expires_at",
    "device", "acr", "current",
}  # fmt: skip


def _unauthorized(realm: str, error: str | None, description: str) -> OAuthError:
    """401 with ``WWW-Authenticate: Bearer`` (RFC 6750 section 3): without ``error`` when no
    token was sent, ``invalid_token`` for any refused one (one answer, whatever the reason)."""
    challenge = f'Bearer realm="{realm}"' + (f', error="{error}"' if error else "")
    return OAuthError(error or "unauthorized", description, status=401, www_authenticate=challenge)


async def caller(request: web.Request) -> Introspection:
    """The presenting access token's introspection (active, an access token, with sub and sid),
    else 401. The IP's rate count comes first (guessing tokens spends it too), the session's once
    the token is known good."""
    gw = request.app[GATEWAY]
    await gw.limit(request, None)
    realm = gw.settings.audience
    authorization = request.headers.get("Authorization")
    if not authorization:
        raise _unauthorized(realm, None, "send the access token: Authorization: Bearer <token>")
    match = BEARER_RE.match(authorization)
    token = match.group(1) if match else ""
    if not token or is_refresh_token(token) or token.count(".") != 2:
        raise _unauthorized(realm, "invalid_token", "the access token is invalid, expired or revoked")
    try:
        answer = await gw.ledger.introspect(token)
    except Unavailable:
        raise OAuthError(
            "temporarily_unavailable", "the ledger is not reachable; retry", status=503
        ) from None
    except LedgerError:
        answer = Introspection(active=False)
    if not answer.active or answer.token_type != "access_token" or not answer.sub or not answer.sid:
        raise _unauthorized(realm, "invalid_token", "the access token is invalid, expired or revoked")
    # the session's count, like a refresh's: only verified tokens spend it (no lock-out by a sid)
    wait = await gw.limiter.hit("session", answer.sid, gw.config.rate_per_session, now=gw.clock())
    if wait is not None:
        raise OAuthError("rate_limited", "too many requests; retry later", status=429, retry_after=wait)
    return answer


def check_level(request: web.Request, who: Introspection) -> None:
    """The configured level for the self-service actions (none by default), as RFC 9470 asks."""
    gw = request.app[GATEWAY]
    short = shortfall(
        gw.config.self_service_requirement(),
        acr=who.acr,
        auth_time=who.auth_time,
        now=gw.clock(),
        realm=gw.settings.audience,
    )
    if short is not None:
        description = (
            "A different authentication level is required"
            if short.reason == "acr"
            else "More recent authentication is required"
        )
        raise OAuthError(STEP_UP, description, status=401, www_authenticate=short.challenge)


def _refusal(err: LedgerError, realm: str) -> OAuthError:
    if isinstance(err, SessionNotFound):  # unknown and another user's alike
        return OAuthError("not_found", "no such session", status=404)
    if isinstance(err, BadRequest):
        return OAuthError("invalid_request", "malformed request")
    if isinstance(err, Unavailable):
        return OAuthError("temporarily_unavailable", "the ledger is not reachable; retry", status=503)
    # the presenting session ended between the introspection and the command
    return _unauthorized(realm, "invalid_token", "the access token is invalid, expired or revoked")


async def devices(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    who = await caller(request)
    assert who.sub is not None and who.sid is not None
    try:
        mine = await gw.ledger.list_sessions(who.sub, current_sid=who.sid)
    except LedgerError as err:
        raise _refusal(err, gw.settings.audience) from None
    sessions = [view.model_dump(mode="json", include=LISTED) for view in mine.sessions]
    return json_response({"sessions": sessions, "as_of": mine.as_of.isoformat()})


async def revoke_device(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    who = await caller(request)
    assert who.sub is not None and who.sid is not None
    sid = request.match_info["sid"]
    if not is_sid(sid):
        raise OAuthError("invalid_request", "malformed session id")
    check_level(request, who)
    try:
        done = await gw.ledger.revoke_own_session(sid, sub=who.sub, current_sid=who.sid)
    except LedgerError as err:
        raise _refusal(err, gw.settings.audience) from None
    return json_response({"sid": sid, "revoked": True, "already_revoked": done.already_revoked})


async def sign_out_others(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    who = await caller(request)
    assert who.sub is not None and who.sid is not None
    check_level(request, who)
    try:
        await gw.ledger.sign_out_others(sub=who.sub, current_sid=who.sid)
    except LedgerError as err:
        raise _refusal(err, gw.settings.audience) from None
    return json_response({"kept_sid": who.sid, "signed_out_others": True})


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight for an allowed origin: a bearer header, no credentials needed."""
    config = request.app[GATEWAY].config
    origin = request.headers.get("Origin")
    if origin is None or origin not in config.cors_origins:
        return json_response({"error": "origin_not_allowed"}, status=403)
    headers = {
        **cors_headers(origin, config.cors_origins, credentials=False),
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": "Authorization",
        "Access-Control-Max-Age": "600",
    }
    return web.Response(status=204, headers=headers)


def register(app: web.Application) -> None:
    app.router.add_get("/session/devices", devices, allow_head=False)
    app.router.add_post("/session/devices/{sid}/revoke", revoke_device)
    app.router.add_post("/session/sign-out-others", sign_out_others)
    for path in ("/session/devices", "/session/devices/{sid}/revoke", "/session/sign-out-others"):
        app.router.add_route("OPTIONS", path, preflight)
