"""OAuth error answers (RFC 6749 section 5.2) and the ledger's refusals in those terms."""

from __future__ import annotations

import json

from aiohttp import web

from ledger.domain.errors import BadRequest, LedgerError, Unavailable

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """``error`` is an RFC 6749 / 7009 / 7662 code; ``description`` never quotes the input."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        retry_after: int | None = None,
        www_authenticate: str | None = None,
    ) -> None:
        super().__init__(error)
        self.error, self.description, self.status = error, description, status
        self.retry_after, self.www_authenticate = retry_after, www_authenticate


def error_response(err: OAuthError) -> web.Response:
    headers = dict(NO_STORE)
    if err.error == "invalid_client":
        headers["WWW-Authenticate"] = 'Basic realm="session-ledger"'
    if err.www_authenticate is not None:  # a bearer challenge (RFC 6750, RFC 9470)
        headers["WWW-Authenticate"] = err.www_authenticate
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    body = json.dumps({"error": err.error, "error_description": err.description})
    return web.Response(status=err.status, text=body, content_type="application/json", headers=headers)


def from_ledger(err: LedgerError) -> OAuthError:
    """A refused token is ``invalid_grant`` whatever the reason (reuse, revoked, expired,
    forged): no oracle for an attacker holding a stolen token."""
    if isinstance(err, BadRequest):
        return OAuthError("invalid_request", "malformed request")
    if isinstance(err, Unavailable):
        return OAuthError("temporarily_unavailable", "the ledger is not reachable; retry", status=503)
    return OAuthError("invalid_grant", "the refresh token is invalid, expired or revoked")
