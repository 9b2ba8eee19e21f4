"""What an edge verifier knows, and the pure check of one access token against it.

No I/O here: ``KeyRing`` and ``Revocations`` are folded from key events and notices by
``consumers.edge``; ``check_token`` is a function of (token, knowledge, now).
The algorithm a token may use is the one bound to its key when the key was published,
never the one its header asks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt

from consumers.notices import Notice

MAX_TOKEN_CHARS = 8192  # a real access token is well under 1 kB
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
REQUIRED = ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "ssq"]


class RejectReason(StrEnum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    WRONG_TYPE = "wrong_type"
    UNKNOWN_KID = "unknown_kid"
    KEY_RETIRED = "key_retired"
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    MISSING_CLAIM = "missing_claim"
    INVALID_CLAIMS = "invalid_claims"
    SESSION_REVOKED = "session_revoked"
    USER_REVOKED = "user_revoked"
    TOKEN_REVOKED = "token_revoked"
    STALE = "stale"


class TokenRejected(Exception):
    """The token must not be accepted; ``reason`` is for logs and metrics, not for clients."""

    def __init__(self, reason: RejectReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccessClaims:
    sub: str
    sid: str
    jti: str
    scopes: tuple[str, ...]
    exp: int
    nbf: int
    iat: int
    ssq: int
    kid: str
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    kid: str
    alg: str
    key: Any  # a cryptography public key object, typed by ``alg``


@dataclass
class KeyRing:
    """Public keys learnt from SigningKeyAdded; a retired kid stays refused forever."""

    keys: dict[str, VerifyingKey] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)

    def add(self, kid: str, alg: str, jwk: dict[str, str]) -> None:
        if jwk.get("alg", alg) != alg or jwk.get("kid", kid) != kid:
            raise ValueError("JWK does not match its event")
        self.keys[kid] = VerifyingKey(kid, alg, jwt.PyJWK(dict(jwk), algorithm=alg).key)

    def retire(self, kid: str) -> None:
        self.retired.add(kid)

    def lookup(self, kid: object) -> VerifyingKey:
        if not isinstance(kid, str) or not KID_RE.fullmatch(kid) or kid not in self.keys:
            raise TokenRejected(RejectReason.UNKNOWN_KID)
        if kid in self.retired:
            raise TokenRejected(RejectReason.KEY_RETIRED)
        return self.keys[kid]


@dataclass
class Revocations:
    """Revoked sessions, user cut-offs (LEDGER seq) and jtis, each with the epoch second
    after which no token it concerns can be alive (then it is forgotten)."""

    sessions: dict[str, float] = field(default_factory=dict)
    users: dict[str, tuple[int, float]] = field(default_factory=dict)
    jtis: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    def apply(self, notice: Notice, keys: KeyRing, forget_at: float) -> bool:
        """Fold one notice in; True the first time this event is seen (idempotent)."""
        first = notice.event_id not in self.seen
        self.seen[notice.event_id] = forget_at
        if notice.kind == "session" and notice.sid:
            self.sessions[notice.sid] = max(forget_at, self.sessions.get(notice.sid, 0.0))
        elif notice.kind == "user" and notice.sub:
            cut, until = self.users.get(notice.sub, (0, 0.0))
            self.users[notice.sub] = (max(cut, notice.revoke_seq), max(until, forget_at))
        elif notice.kind == "key" and notice.kid:
            keys.retire(notice.kid)
        if notice.jti:
            self.jtis[notice.jti] = max(forget_at, self.jtis.get(notice.jti, 0.0))
        return first

    def check(self, claims: AccessClaims) -> None:
        """O(1): three dictionary lookups."""
        if claims.sid in self.sessions:
            raise TokenRejected(RejectReason.SESSION_REVOKED)
        cut = self.users.get(claims.sub)
        if cut is not None and cut[0] > claims.ssq:
            raise TokenRejected(RejectReason.USER_REVOKED)
        if claims.jti in self.jtis:
            raise TokenRejected(RejectReason.TOKEN_REVOKED)

    def prune(self, now: float) -> int:
        """Forget what no live token can be concerned by any more."""
        dropped = 0
        for table in (self.sessions, self.jtis, self.seen):
            old = [k for k, until in table.items() if until < now]
            for k in old:
                del table[k]
            dropped += len(old)
        for sub in [s for s, (_, until) in self.users.items() if until < now]:
            del self.users[sub]
            dropped += 1
        return dropped

    def counts(self) -> dict[str, int]:
        return {"sessions": len(self.sessions), "users": len(self.users), "jtis": len(self.jtis)}


@dataclass(frozen=True)
class Expectations:
    issuer: str
    audience: str
    leeway: float


def check_signature(token: str, keys: KeyRing, expect: Expectations) -> AccessClaims:
    """Header -> key -> signature and registered claims, each failure with its reason."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected(RejectReason.TOO_LARGE)
    header = _header(token)
    key = keys.lookup(header.get("kid"))
    if header.get("alg") != key.alg:
        raise TokenRejected(RejectReason.ALGORITHM_NOT_ALLOWED)
    if str(header.get("typ", "")).lower() not in TOKEN_TYPES:
        raise TokenRejected(RejectReason.WRONG_TYPE)
    return _claims(_decode(token, key, expect), key.kid)


def check_times(claims: AccessClaims, *, now: float, leeway: float) -> None:
    """Re-check validity in time for a token whose signature was verified earlier."""
    if now >= claims.exp + leeway:
        raise TokenRejected(RejectReason.EXPIRED)
    if now < claims.nbf - leeway:
        raise TokenRejected(RejectReason.NOT_YET_VALID)


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenRejected(RejectReason.MALFORMED) from None
    if not isinstance(header, dict):
        raise TokenRejected(RejectReason.MALFORMED)
    return header


_PYJWT_REASONS: tuple[tuple[type[Exception], RejectReason], ...] = (
    (jwt.ExpiredSignatureError, RejectReason.EXPIRED),
    (jwt.ImmatureSignatureError, RejectReason.NOT_YET_VALID),
    (jwt.InvalidAudienceError, RejectReason.WRONG_AUDIENCE),
    (jwt.InvalidIssuerError, RejectReason.WRONG_ISSUER),
    (jwt.MissingRequiredClaimError, RejectReason.MISSING_CLAIM),
    (jwt.InvalidSignatureError, RejectReason.BAD_SIGNATURE),
    (jwt.DecodeError, RejectReason.MALFORMED),
)


def _decode(token: str, key: VerifyingKey, expect: Expectations) -> dict[str, Any]:
    try:
        return jwt.decode(
            token,
            key.key,
            algorithms=[key.alg],
            audience=expect.audience,
            issuer=expect.issuer,
            leeway=expect.leeway,
            options={"require": REQUIRED, "strict_aud": True},
        )
    except jwt.InvalidTokenError as err:
        for cls, reason in _PYJWT_REASONS:
            if isinstance(err, cls):
                raise TokenRejected(reason) from None
        raise TokenRejected(RejectReason.INVALID_CLAIMS) from None


def _claims(data: dict[str, Any], kid: str) -> AccessClaims:
    strings = ("sub", "sid", "jti")
    numbers = ("exp", "nbf", "iat", "ssq")
    scope, client_id = data.get("scope", ""), data.get("client_id")
    if (
        not all(isinstance(data[k], str) and data[k] for k in strings)
        or not all(type(data[k]) is int for k in numbers)
        or not isinstance(scope, str)
        or not (client_id is None or isinstance(client_id, str))
    ):
        raise TokenRejected(RejectReason.INVALID_CLAIMS)
    return AccessClaims(
        sub=data["sub"],
        sid=data["sid"],
        jti=data["jti"],
        scopes=tuple(scope.split()),
        exp=data["exp"],
        nbf=data["nbf"],
        iat=data["iat"],
        ssq=data["ssq"],
        kid=kid,
        client_id=client_id,
    )
