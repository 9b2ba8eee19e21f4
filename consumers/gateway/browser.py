"""The browser's door (backend-for-frontend): the refresh token lives in an HttpOnly cookie,
JavaScript only ever holds the short-lived access token.

``POST /session/refresh`` rotates the cookie's token and answers the access token with its
lifetime and the session's idle and absolute ends; ``POST /session/logout`` revokes the session
and clears the cookie. Both need the CSRF header and pass the Origin/Sec-Fetch-Site checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web

from consumers.gateway.context import GATEWAY
from consumers.gateway.cookies import clear_refresh_cookie, set_refresh_cookie
from consumers.gateway.errors import OAuthError
from consumers.gateway.headers import csrf_refusal, preflight_headers
from consumers.gateway.responses import json_response, token_body
from ledger.domain.errors import LedgerError, Unavailable


def own_origin(request: web.Request) -> str:
    """The origin browsers see: the configured public URL's (behind a proxy, where the scheme
    and host the gateway sees are the proxy's), else the request's own."""
    public = request.app[GATEWAY].config.public_url
    if public is not None:
        parts = urlsplit(public)
        return f"{parts.scheme}://{parts.netloc}"
    return f"{request.scheme}://{request.host}"


def check_csrf(request: web.Request) -> None:
    config = request.app[GATEWAY].config
    reason = csrf_refusal(
        request.headers,
        own_origin=own_origin(request),
        allowed=config.cors_origins,
        csrf_header=config.csrf_header,
    )
    if reason is not None:
        raise OAuthError("csrf_refused", reason.replace("_", " "), status=403)


def cookie_of(request: web.Request) -> str | None:
    value = request.cookies.get(request.app[GATEWAY].config.cookie_name)
    return value if value and len(value) <= 256 else None


async def refresh(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    check_csrf(request)
    raw = cookie_of(request)
    await gw.limit(request, raw)
    if raw is None:
        return json_response({"error": "login_required"}, status=401)
    try:
        pair = await gw.ledger.rotate(raw, client_id=gw.config.browser_client_id)
    except Unavailable:
        raise OAuthError(
            "temporarily_unavailable", "the ledger is not reachable; retry", status=503
        ) from None
    except LedgerError:
        response = json_response({"error": "login_required"}, status=401)
        clear_refresh_cookie(response, gw.config.cookie_name)
        return response
    await gw.accepted(raw)
    now = datetime.now(UTC)
    response = json_response(token_body(pair, gw.clock(), refresh_token=False))
    set_refresh_cookie(
        response, gw.config.cookie_name, pair.refresh_token, expires_at=pair.refresh_expires_at, now=now
    )
    return response


async def logout(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    check_csrf(request)
    raw = cookie_of(request)
    await gw.limit(request, raw)
    if raw is not None:
        try:
            await gw.ledger.logout(raw, client_id=gw.config.browser_client_id)
        except Unavailable:
            raise OAuthError(
                "temporarily_unavailable", "the ledger is not reachable; retry", status=503
            ) from None
        except LedgerError:
            pass  # already ended: the cookie goes all the same
    response = json_response({"ok": True})
    clear_refresh_cookie(response, gw.config.cookie_name)
    return response


async def preflight(request: web.Request) -> web.Response:
    config = request.app[GATEWAY].config
    headers = preflight_headers(request.headers.get("Origin"), config.cors_origins, config.csrf_header)
    if headers is None:
        return json_response({"error": "origin_not_allowed"}, status=403)
    return web.Response(status=204, headers=headers)


def register(app: web.Application) -> None:
    for path, handler in (("/session/refresh", refresh), ("/session/logout", logout)):
        app.router.add_post(path, handler)
        app.router.add_route("OPTIONS", path, preflight)
