"""``/oauth/token`` (refresh_token grant, RFC 6749 section 6), ``/oauth/revoke`` (RFC 7009),
``/oauth/introspect`` (RFC 7662). Form bodies, client authentication, ``no-store`` answers."""

from __future__ import annotations

from aiohttp import web

from consumers.gateway.clients import authenticate
from consumers.gateway.context import GATEWAY, is_refresh_token
from consumers.gateway.errors import NO_STORE, OAuthError, from_ledger
from consumers.gateway.forms import read_form
from consumers.gateway.responses import json_response, token_body
from ledger.domain.errors import LedgerError, Unavailable


def required(form: dict[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise OAuthError("invalid_request", f"missing parameter {name}")
    return value


async def token(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    form = await read_form(request)
    await gw.limit(request, form.get("refresh_token"))  # before authentication: failures count too
    client = authenticate(gw.registry, request.headers.get("Authorization"), form)
    grant = required(form, "grant_type")
    if grant != "refresh_token":
        raise OAuthError("unsupported_grant_type", "only the refresh_token grant is served here")
    raw = required(form, "refresh_token")
    if "scope" in form:
        raise OAuthError("invalid_scope", "a refresh keeps the session's scopes; omit scope")
    try:
        pair = await gw.ledger.rotate(raw, client_id=client.client_id)
    except LedgerError as err:
        raise from_ledger(err) from None
    await gw.accepted(raw)
    return json_response(token_body(pair, gw.clock()))


async def revoke(request: web.Request) -> web.Response:
    """A refresh token ends its session; an access token is revoked alone. An invalid or
    unknown token is answered 200 too (RFC 7009 section 2.2): nothing to learn from it."""
    gw = request.app[GATEWAY]
    form = await read_form(request)
    await gw.limit(request, form.get("token"))
    client = authenticate(gw.registry, request.headers.get("Authorization"), form)
    raw = required(form, "token")  # token_type_hint is not needed: the two formats differ
    try:
        if is_refresh_token(raw):
            await gw.ledger.logout(raw, client_id=client.client_id)
        elif raw.count(".") == 2:
            await gw.ledger.revoke_access(raw, client_id=client.client_id)
    except Unavailable:
        raise OAuthError(
            "temporarily_unavailable", "the ledger is not reachable; retry", status=503
        ) from None
    except LedgerError:
        pass  # invalid, foreign, expired or already revoked: the same 200
    return web.Response(status=200, headers=NO_STORE)


async def introspect(request: web.Request) -> web.Response:
    """For resource servers (clients registered with ``introspect``); the ledger's own
    introspection answer plus ``expires_in``."""
    gw = request.app[GATEWAY]
    form = await read_form(request)
    await gw.limit(request, None)
    client = authenticate(gw.registry, request.headers.get("Authorization"), form)
    if not client.introspect:
        raise OAuthError("invalid_client", "this client may not introspect", status=401)
    raw = required(form, "token")
    try:
        answer = await gw.ledger.introspect(raw)
    except LedgerError as err:
        raise from_ledger(err) from None
    body = answer.model_dump(mode="json", exclude_none=True)
    if answer.active and answer.exp is not None:
        body["expires_in"] = max(0, int(answer.exp - gw.clock()))
    return json_response(body)


def register(app: web.Application) -> None:
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/oauth/revoke", revoke)
    app.router.add_post("/oauth/introspect", introspect)
