"""The gateway's OpenAPI 3.1 document; a test checks it against the running server's routes
and answers."""

from __future__ import annotations

from typing import Any

FORM = "application/x-www-form-urlencoded"
ERROR = {"$ref": "#/components/schemas/Error"}


def _form(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": props}
    return {"required": True, "content": {FORM: {"schema": schema}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answers(ok: dict[str, Any], *codes: str) -> dict[str, Any]:
    return {"200": ok, **{code: {"description": code, **_json(ERROR)} for code in codes}}


def _token_answer() -> dict[str, Any]:
    return {"description": "tokens", **_json({"$ref": "#/components/schemas/Token"})}


def paths(cookie: str, csrf: str) -> dict[str, Any]:
    token_string = {"type": "string", "maxLength": 8192}
    csrf_param = {"name": csrf, "in": "header", "required": True, "schema": {"const": "1"}}
    return {
        "/oauth/token": {
            "post": {
                "summary": "Refresh (RFC 6749 section 6): rotate the refresh token",
                "security": [{"basic": []}, {}],
                "requestBody": _form(
                    ["grant_type", "refresh_token"],
                    {
                        "grant_type": {"const": "refresh_token"},
                        "refresh_token": token_string,
                        "client_id": {"type": "string"},
                    },
                ),
                "responses": _answers(_token_answer(), "400", "401", "413", "415", "429", "503"),
            }
        },
        "/oauth/revoke": {
            "post": {
                "summary": "Revoke (RFC 7009): a refresh token ends its session, an access token itself",
                "security": [{"basic": []}, {}],
                "requestBody": _form(
                    ["token"],
                    {
                        "token": token_string,
                        "token_type_hint": {"enum": ["refresh_token", "access_token"]},
                        "client_id": {"type": "string"},
                    },
                ),
                "responses": _answers(
                    {"description": "revoked, or nothing to revoke"}, "400", "401", "413", "415", "429", "503"
                ),
            }
        },
        "/oauth/introspect": {
            "post": {
                "summary": "Introspect (RFC 7662), for registered resource servers",
                "security": [{"basic": []}],
                "requestBody": _form(["token"], {"token": token_string}),
                "responses": _answers(
                    {"description": "RFC 7662 answer", **_json({"type": "object", "required": ["active"]})},
                    "400",
                    "401",
                    "413",
                    "415",
                    "503",
                ),
            }
        },
        "/backend/sessions": {
            "post": {
                "summary": "Start a session for a user the backend authenticated",
                "security": [{"basic": []}],
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["sub", "client_id"],
                            "properties": {
                                "sub": {"type": "string", "maxLength": 255},
                                "client_id": {"type": "string"},
                                "scopes": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
                            },
                        }
                    ),
                },
                "responses": {
                    "201": _token_answer(),
                    **{
                        c: {"description": c, **_json(ERROR)}
                        for c in ("400", "401", "403", "413", "415", "429", "503")
                    },
                },
            }
        },
        "/session/refresh": {
            "post": {
                "summary": f"Browser refresh: rotates the {cookie} cookie (HttpOnly, Secure, Strict)",
                "parameters": [csrf_param],
                "responses": _answers(_token_answer(), "401", "403", "429", "503"),
            },
            "options": {
                "summary": "CORS preflight (allow-listed origins)",
                "responses": {
                    "204": {"description": "allowed"},
                    "403": {"description": "origin not allowed", **_json(ERROR)},
                },
            },
        },
        "/session/logout": {
            "post": {
                "summary": "Browser logout: revokes the session and clears the cookie",
                "parameters": [csrf_param],
                "responses": _answers(
                    {"description": "logged out", **_json({"type": "object"})}, "403", "429", "503"
                ),
            },
            "options": {
                "summary": "CORS preflight (allow-listed origins)",
                "responses": {
                    "204": {"description": "allowed"},
                    "403": {"description": "origin not allowed", **_json(ERROR)},
                },
            },
        },
        **self_service_paths(),
        "/.well-known/jwks.json": {
            "get": {
                "summary": "JWKS (RFC 7517)",
                "responses": {
                    "200": {
                        "description": "key set",
                        "content": {"application/jwk-set+json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/.well-known/oauth-authorization-server": {
            "get": {
                "summary": "RFC 8414 metadata",
                "responses": {"200": {"description": "metadata", **_json({"type": "object"})}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "responses": {"200": {"description": "OpenAPI", **_json({"type": "object"})}},
            }
        },
        "/session-ledger.js": {
            "get": {
                "summary": "the browser helper (ES module)",
                "responses": {
                    "200": {
                        "description": "JavaScript",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def _bearer_preflight(*extra: str) -> dict[str, Any]:
    return {
        "summary": "CORS preflight (allow-listed origins; Authorization header)",
        "responses": {
            "204": {"description": "allowed"},
            "403": {"description": "origin not allowed", **_json(ERROR)},
            **{code: {"description": code, **_json(ERROR)} for code in extra},
        },
    }


def self_service_paths() -> dict[str, Any]:
    """Authenticated by the presenting access token; 401 carries ``WWW-Authenticate: Bearer``
    (with RFC 9470's ``insufficient_user_authentication`` when a level is required)."""
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    sid = {"name": "sid", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}
    return {
        "/session/devices": {
            "get": {
                "summary": "My sessions (devices): device, last seen, acr, current = this one",
                "security": bearer,
                "responses": _answers(
                    {"description": "sessions", **_json({"$ref": "#/components/schemas/Devices"})},
                    "401",
                    "429",
                    "503",
                ),
            },
            "options": _bearer_preflight(),
        },
        "/session/devices/{sid}/revoke": {
            "post": {
                "summary": "Revoke one of my sessions (another user's is 404 like an unknown one)",
                "security": bearer,
                "parameters": [sid],
                "responses": _answers(
                    {"description": "revoked", **_json({"type": "object", "required": ["sid", "revoked"]})},
                    "400",
                    "401",
                    "404",
                    "429",
                    "503",
                ),
            },
            "options": _bearer_preflight("404"),  # a sid no session id can be (e.g. "{sid}")
        },
        "/session/sign-out-others": {
            "post": {
                "summary": "Sign out all my other devices; the presenting session keeps working",
                "security": bearer,
                "responses": _answers(
                    {"description": "signed out", **_json({"type": "object", "required": ["kept_sid"]})},
                    "401",
                    "429",
                    "503",
                ),
            },
            "options": _bearer_preflight(),
        },
    }


def document(base: str, cookie: str, csrf: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "session-ledger gateway", "version": "1"},
        "servers": [{"url": base}],
        "paths": paths(cookie, csrf),
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
                },
                "Devices": {
                    "type": "object",
                    "required": ["sessions", "as_of"],
                    "properties": {
                        "as_of": {"type": "string", "format": "date-time"},
                        "sessions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["sid", "current", "started_at"],
                                "properties": {
                                    "sid": {"type": "string"},
                                    "client_id": {"type": ["string", "null"]},
                                    "scopes": {"type": "array", "items": {"type": "string"}},
                                    "started_at": {"type": "string", "format": "date-time"},
                                    "last_seen_at": {"type": ["string", "null"], "format": "date-time"},
                                    "idle_expires_at": {"type": "string", "format": "date-time"},
                                    "expires_at": {"type": "string", "format": "date-time"},
                                    "device": {"type": ["object", "null"]},
                                    "acr": {"type": ["string", "null"]},
                                    "current": {"type": "boolean"},
                                },
                            },
                        },
                    },
                },
                "Token": {
                    "type": "object",
                    "required": ["access_token", "token_type", "expires_in"],
                    "properties": {
                        "access_token": {"type": "string"},
                        "token_type": {"const": "Bearer"},
                        "expires_in": {"type": "integer"},
                        "refresh_token": {"type": "string"},
                        "sid": {"type": "string"},
                        "generation": {"type": "integer"},
                        "idle_expires_at": {"type": "integer"},
                        "session_expires_at": {"type": "integer"},
                    },
                },
            },
        },
    }
