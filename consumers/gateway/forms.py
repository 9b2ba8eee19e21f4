"""Request bodies, bounded and strict: a size limit checked before reading, one content type,
each parameter at most once (RFC 6749 section 3.2), UTF-8 only. Every refusal is a clear 4xx."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from consumers.gateway.errors import OAuthError

MAX_FORM_BYTES = 16 * 1024  # an RS256 access token to revoke or introspect is about 1 kB
MAX_PARAMS = 16
FORM = "application/x-www-form-urlencoded"


async def read_body(request: web.Request, limit: int = MAX_FORM_BYTES) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise OAuthError("invalid_request", f"body larger than {limit} bytes", status=413)
    chunks, size = [], 0
    while chunk := await request.content.read(limit + 1 - size):  # bounded: stops past the limit
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise OAuthError("invalid_request", f"body larger than {limit} bytes", status=413)
    return b"".join(chunks)


def parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                          errors="strict", max_num_fields=MAX_PARAMS)  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "malformed form body") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"parameter {name[:32]!r} repeated")
        form[name] = value
    return form


async def read_form(request: web.Request) -> dict[str, str]:
    if request.content_type != FORM:
        raise OAuthError("invalid_request", f"content type must be {FORM}", status=415)
    return parse_form(await read_body(request))


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise OAuthError("invalid_request", "content type must be application/json", status=415)
    try:
        data = json.loads(await read_body(request))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise OAuthError("invalid_request", "malformed JSON body") from None
    if not isinstance(data, dict):
        raise OAuthError("invalid_request", "the body must be a JSON object")
    return data
