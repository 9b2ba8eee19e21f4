"""What an edge verifier knows, and the pure check of one access token against it.

No I/O here: ``KeyRing`` and ``Revocations`` are folded from key events and notices by
``consumers.edge.verifier``; ``check_token`` is a function of (token, knowledge, now).
The algorithm a token may use is the one bound to its key when the key was published,
never the one its header asks for.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms

from ledger.contracts.notices import Notice

MAX_TOKEN_CHARS = 8192  # a real access token is well under 1 kB
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
SEGMENTS_RE = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)", re.ASCII)
ALGORITHMS: dict[str, Algorithm] = {
    name: algo for name, algo in get_default_algorithms().items() if name in ("ES256", "EdDSA", "RS256")
}
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
    verifier: Algorithm  # PyJWT's implementation of ``alg``, fixed when the key was learnt


@dataclass
class KeyRing:
    """Public keys learnt from SigningKeyAdded; a retired kid stays refused forever."""

    keys: dict[str, VerifyingKey] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)

    def add(self, kid: str, alg: str, jwk: dict[str, str]) -> None:
        if jwk.get("alg", alg) != alg or jwk.get("kid", kid) != kid:
            raise ValueError("JWK does not match its event")
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
        self.keys[kid] = VerifyingKey(kid, alg, key, ALGORITHMS[alg])

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


def check_signature(token: str, keys: KeyRing, expect: Expectations, *, now: float) -> AccessClaims:
    """Header -> key -> signature -> registered claims, each failure with its reason.

    One strict parse (base64url without padding, JSON objects), then the signature with
    PyJWT's algorithm object for the key's own algorithm: PyJWT's generic ``decode``
    spends more time validating the encoding than the P-256 check itself.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected(RejectReason.TOO_LARGE)
    match = SEGMENTS_RE.fullmatch(token)
    if match is None:
        raise TokenRejected(RejectReason.MALFORMED)
    header = _json_object(match[1])
    key = keys.lookup(header.get("kid"))
    if header.get("alg") != key.alg:
        raise TokenRejected(RejectReason.ALGORITHM_NOT_ALLOWED)
    if str(header.get("typ", "")).lower() not in TOKEN_TYPES:
        raise TokenRejected(RejectReason.WRONG_TYPE)
    if "crit" in header:
        raise TokenRejected(RejectReason.MALFORMED)  # no critical extension is understood here
    signing_input = token[: match.end(2)].encode("ascii")
    if not key.verifier.verify(signing_input, key.key, _b64(match[3])):
        raise TokenRejected(RejectReason.BAD_SIGNATURE)
    payload = _json_object(match[2])
    check_registered(payload, expect)
    claims = _claims(payload, key.kid)
    check_times(claims, now=now, leeway=expect.leeway)
    return claims


def check_times(claims: AccessClaims, *, now: float, leeway: float) -> None:
    """Validity in time (also re-checked for a token whose signature was verified earlier)."""
    if now >= claims.exp + leeway:
        raise TokenRejected(RejectReason.EXPIRED)
    if now < claims.nbf - leeway or now < claims.iat - leeway:
        raise TokenRejected(RejectReason.NOT_YET_VALID)


def check_registered(data: dict[str, Any], expect: Expectations) -> None:
    """Required claims present; ``iss`` and ``aud`` exactly ours (one string, no list)."""
    if any(name not in data for name in REQUIRED):
        raise TokenRejected(RejectReason.MISSING_CLAIM)
    if data["iss"] != expect.issuer:
        raise TokenRejected(RejectReason.WRONG_ISSUER)
    if data["aud"] != expect.audience:
        raise TokenRejected(RejectReason.WRONG_AUDIENCE)


def _b64(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected(RejectReason.MALFORMED) from None


def _json_object(segment: str) -> dict[str, Any]:
    try:
        data = json.loads(_b64(segment))
    except (ValueError, UnicodeDecodeError):
        raise TokenRejected(RejectReason.MALFORMED) from None
    if not isinstance(data, dict):
        raise TokenRejected(RejectReason.MALFORMED)
    return data


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
