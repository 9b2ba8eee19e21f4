"""What clients read before they call: the JWKS (RFC 7517), the authorization-server metadata
(RFC 8414), the OpenAPI document and the browser helper."""

from __future__ import annotations

import json
from importlib import resources

from aiohttp import web

from consumers.gateway.context import GATEWAY
from consumers.gateway.headers import cors_headers
from consumers.gateway.openapi import document
from ledger.service.keyops import jwks as key_set

HELPER = "session-ledger.js"


def jwks_max_age(max_staleness_s: float) -> int:
    """How long a fetched key set may be reused: half the edges' staleness limit. A new key
    is in the set from its publication, but it may start signing seconds later (once every
    live edge has it), so a verifier that meets an unknown ``kid`` must refetch at once
    (jose's ``createRemoteJWKSet`` does); this bounds staleness otherwise."""
    return max(1, int(max_staleness_s // 2))


async def jwks(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    age = jwks_max_age(gw.settings.edge_max_staleness.total_seconds())
    headers = {"Cache-Control": f"public, max-age={age}", "Access-Control-Allow-Origin": "*"}
    return web.Response(
        text=json.dumps(key_set(gw.keys.book)), content_type="application/jwk-set+json", headers=headers
    )


def metadata_body(base: str, issuer: str) -> dict[str, object]:
    return {
        "issuer": issuer,
        "token_endpoint": f"{base}/oauth/token",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "grant_types_supported": ["refresh_token"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "service_documentation": f"{base}/openapi.json",
    }


async def metadata(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = metadata_body(gw.config.base_url(), gw.settings.issuer)
    headers = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}
    return web.json_response(body, headers=headers)


async def openapi(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.json_response(document(gw.config.base_url(), gw.config.cookie_name, gw.config.csrf_header))


async def helper(request: web.Request) -> web.Response:
    config = request.app[GATEWAY].config
    text = resources.files("consumers.gateway").joinpath("static", HELPER).read_text()
    headers = {
        "Cache-Control": "no-cache",
        **cors_headers(request.headers.get("Origin"), config.cors_origins, credentials=False),
    }
    return web.Response(text=text, content_type="text/javascript", headers=headers)


def register(app: web.Application) -> None:
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get(f"/{HELPER}", helper)
