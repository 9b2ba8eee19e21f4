"""Access tokens: short-lived JWTs signed with the active asymmetric key (``kid`` in the header)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt

from ledger.domain.events import AuthContext
from ledger.service.keys import SigningKey


@dataclass(frozen=True, slots=True)
class AccessGrant:
    sub: str
    sid: str
    scopes: tuple[str, ...]
    session_started_at: datetime
    session_start_seq: int
    client_id: str | None = None
    auth: AuthContext | None = None  # acr / amr / auth_time, unchanged through rotations


class AccessTokenSigner:
    def __init__(self, key: SigningKey, *, issuer: str, audience: str, ttl: timedelta) -> None:
        self.key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._headers = {"kid": key.kid, "typ": "at+jwt"}

    def current(self, now: datetime) -> AccessTokenSigner:
        """A fixed signer is its own current signer (``ServiceKeys`` picks one per moment)."""
        return self

    def sign(self, grant: AccessGrant, *, now: datetime, cap: datetime) -> tuple[str, datetime]:
        """Sign a token for ``grant``; it never outlives ``cap`` (the session's absolute end)."""
        exp = min(now + self.ttl, cap)
        iat = int(now.timestamp())
        claims: dict[str, object] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": grant.sub,
            "sid": grant.sid,
            "jti": uuid.uuid4().hex,
            "iat": iat,
            "nbf": iat,
            "exp": int(exp.timestamp()),
            "scope": " ".join(grant.scopes),
            "sst": int(grant.session_started_at.timestamp()),
            "ssq": grant.session_start_seq,
        }
        if grant.client_id is not None:
            claims["client_id"] = grant.client_id
        if grant.auth is not None:
            claims.update(auth_claims(grant.auth))
        token = jwt.encode(claims, self.key.private, algorithm=self.key.alg, headers=self._headers)
        return token, exp.replace(microsecond=0)


def auth_claims(auth: AuthContext) -> dict[str, object]:
    """OpenID Connect's ``acr``, ``amr`` (a list) and ``auth_time`` (epoch seconds), when set."""
    claims: dict[str, object] = {}
    if auth.acr is not None:
        claims["acr"] = auth.acr
    if auth.amr:
        claims["amr"] = list(auth.amr)
    if auth.auth_time is not None:
        claims["auth_time"] = int(auth.auth_time.timestamp())
    return claims
