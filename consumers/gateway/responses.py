"""JSON answers of the gateway: token responses (RFC 6749 section 5.1) and plain JSON."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from consumers.gateway.errors import NO_STORE
from ledger.contracts.commands import TokenPair


def json_response(
    body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def token_body(pair: TokenPair, now: float, *, refresh_token: bool = True) -> dict[str, Any]:
    """The access token, its lifetime and the session's ends (so an app can warn before a logout)."""
    body: dict[str, Any] = {
        "access_token": pair.access_token,
        "token_type": "Bearer",
        "expires_in": max(0, int(pair.access_expires_at.timestamp() - now)),
        "sid": pair.sid,
        "generation": pair.generation,
        "idle_expires_at": int(pair.refresh_expires_at.timestamp()),
        "session_expires_at": int(pair.session_expires_at.timestamp()),
    }
    if refresh_token:
        body["refresh_token"] = pair.refresh_token
    return body
