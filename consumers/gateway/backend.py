"""``POST /backend/sessions``: a trusted backend, having authenticated a user itself, starts a
session for one of the clients it serves. Confidential clients only (HTTP Basic), never a
browser: NATS's start command trusts the ``sub`` it is sent, so this door must be closed to
anyone but the backends the registry names."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from consumers.gateway.clients import authenticate
from consumers.gateway.context import GATEWAY
from consumers.gateway.errors import OAuthError, from_ledger
from consumers.gateway.forms import read_json
from consumers.gateway.responses import json_response, token_body
from ledger.contracts.commands import StartSessionRequest
from ledger.domain.errors import LedgerError


async def start_session(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    await gw.limit(request, None)
    authorization = request.headers.get("Authorization")
    if authorization is None:
        raise OAuthError("invalid_client", "backends authenticate with HTTP Basic", status=401)
    backend = authenticate(gw.registry, authorization, {})
    try:
        req = StartSessionRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
        raise OAuthError("invalid_request", f"invalid field(s): {', '.join(fields)}") from None
    if req.client_id is None or req.client_id not in backend.start_sessions_for:
        raise OAuthError(
            "unauthorized_client", "this backend may not start sessions for that client", status=403
        )
    try:
        pair = await gw.ledger.start_session(req.sub, client_id=req.client_id, scopes=req.scopes)
    except LedgerError as err:
        raise from_ledger(err) from None
    return json_response(token_body(pair, gw.clock()), status=201)


def register(app: web.Application) -> None:
    app.router.add_post("/backend/sessions", start_session)
