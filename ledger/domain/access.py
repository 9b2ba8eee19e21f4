"""The one access-token verifier: the edge, introspection and the HTTP gateway all call it.

A pure check of (token, known keys, expectations, now) -> claims or ``TokenRejected``.
The algorithm a token may use is the one bound to its key when the key was learnt,
never the one its header asks for. Every input is bounded: token size, JSON depth
(a deeply nested header is ``malformed``, not a crash), and integer claims must fit
in 53 bits (an ``exp`` of 10**400 is ``invalid_claims``). Clients see one opaque
"invalid token"; ``reason`` is for logs and metrics.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms

from ledger.domain.events import SigningKeyActivated, SigningKeyAdded, SigningKeyRetired
from ledger.domain.ids import KID_RE
from ledger.domain.keys import proof_kid, statement_of

MAX_TOKEN_CHARS = 8192  # a real access token is well under 1 kB
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
SEGMENTS_RE = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)", re.ASCII)
ALGORITHMS: dict[str, Algorithm] = {
    name: algo for name, algo in get_default_algorithms().items() if name in ("ES256", "EdDSA", "RS256")
}
REQUIRED = ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "ssq"]
MAX_INT_CLAIM = 2**53  # exp, nbf, iat, ssq: JSON-safe integers, and always comparable with a float
HEADER_CACHE = 256  # distinct JWS headers remembered (a ledger has a handful: one per key)
MAX_CONTAINERS = 8  # our headers and claims are flat objects: more brackets than this are not ours
DEFAULT_LEEWAY = timedelta(seconds=10)  # clock skew tolerated on exp/nbf/iat, everywhere


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
    acr: str | None = None  # authentication context (OpenID Connect), kept through rotations
    amr: tuple[str, ...] = ()
    auth_time: int | None = None


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    kid: str
    alg: str
    key: Any  # a cryptography public key object, typed by ``alg``
    verifier: Algorithm  # PyJWT's implementation of ``alg``, fixed when the key was learnt


class KeyNotTrusted(ValueError):
    """A key event whose proof no trusted key signed: ignored (it may be a forgery)."""


@dataclass
class KeyRing:
    """Public keys learnt from SigningKeyAdded; a retired kid stays refused forever.

    Without a root, only the first key is taken on trust (trust on first use); every later
    one must come with a proof signed by a key already in the ring (``ledger.domain.keys``).
    With the operator's ``root`` key, nothing is taken on trust: every key event needs a
    proof by the root or by a trusted key. The root authorises; it never verifies tokens.
    """

    keys: dict[str, VerifyingKey] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)
    genesis_seen: bool = False  # the first key event came (usable or not): no more trust on first use
    root: VerifyingKey | None = None

    @classmethod
    def rooted(cls, jwk: dict[str, str] | None) -> KeyRing:
        """A ring that trusts only what ``jwk`` (the operator's root public key) authorised."""
        if jwk is None:
            return cls()
        alg = jwk.get("alg", "")
        if alg not in ALGORITHMS:
            raise ValueError(f"root key algorithm must be one of {sorted(ALGORITHMS)}")
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
        return cls(root=VerifyingKey(jwk.get("kid", "root"), alg, key, ALGORITHMS[alg]))

    def add(self, kid: str, alg: str, jwk: dict[str, str]) -> None:
        """Learn a key unconditionally (a key the caller already trusts)."""
        if jwk.get("alg", alg) != alg or jwk.get("kid", kid) != kid:
            raise ValueError("JWK does not match its event")
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
        self.keys[kid] = VerifyingKey(kid, alg, key, ALGORITHMS[alg])

    def add_event(self, event: SigningKeyAdded) -> None:
        """Learn the key of a key event, if its proof is good (or it is the very first key)."""
        if event.kid in self.keys:
            return
        first, self.genesis_seen = not self.genesis_seen and self.root is None, True
        if not first and not self.authorizes(event.proof, statement_of(event)):
            raise KeyNotTrusted(event.kid)
        self.add(event.kid, event.alg, event.public_jwk)

    def retire_event(self, event: SigningKeyRetired) -> None:
        if not self.authorizes(event.proof, statement_of(event)):
            raise KeyNotTrusted(event.kid)
        self.retire(event.kid)

    def activate_event(self, event: SigningKeyActivated) -> None:
        """Nothing changes for verification; raises if the event is not authorised."""
        if event.kid not in self.keys or not self.authorizes(event.proof, statement_of(event)):
            raise KeyNotTrusted(event.kid)

    def authorizes(self, proof: str | None, statement: bytes) -> bool:
        """True iff ``proof`` is a JWS of exactly ``statement`` by an unretired key of this ring
        (a retired key may have been compromised: it authorises nothing any more)."""
        kid = proof_kid(proof) if proof else None
        signer = self.keys.get(kid) if kid is not None and kid not in self.retired else None
        if signer is None and self.root is not None and kid == self.root.kid:
            signer = self.root
        if signer is None or proof is None:
            return False
        try:
            signed = jwt.api_jws.decode(proof, signer.key, algorithms=[signer.alg])
        except (jwt.PyJWTError, ValueError):
            return False
        return bool(signed == statement)

    def retire(self, kid: str) -> None:
        self.retired.add(kid)

    def lookup(self, kid: object) -> VerifyingKey:
        if not isinstance(kid, str) or not KID_RE.fullmatch(kid) or kid not in self.keys:
            raise TokenRejected(RejectReason.UNKNOWN_KID)
        if kid in self.retired:
            raise TokenRejected(RejectReason.KEY_RETIRED)
        return self.keys[kid]


@dataclass(frozen=True)
class Expectations:
    """What every verifier requires of a token besides its signature (one instance per role)."""

    issuer: str
    audience: str
    leeway: float = DEFAULT_LEEWAY.total_seconds()


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
    kid, alg, typ, crit = _header(match[1])
    key = keys.lookup(kid)
    if alg != key.alg:
        raise TokenRejected(RejectReason.ALGORITHM_NOT_ALLOWED)
    if typ not in TOKEN_TYPES:
        raise TokenRejected(RejectReason.WRONG_TYPE)
    if crit:
        raise TokenRejected(RejectReason.MALFORMED)  # no critical extension is understood here
    signing_input = token[: match.end(2)].encode("ascii")
    if not key.verifier.verify(signing_input, key.key, _b64(match[3])):
        raise TokenRejected(RejectReason.BAD_SIGNATURE)
    payload = _json_object(match[2])
    check_registered(payload, expect)
    claims = _claims(payload, key.kid)
    check_times(claims, now=now, leeway=expect.leeway)
    return claims


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header(segment: str) -> tuple[object, object, str, bool]:
    """(kid, alg, lower-case typ, has crit) of a header segment. Pure, so memoised: every token
    of one key carries the same header, and parsing it cost a fifth of a cold ES256 verify.
    Malformed segments raise and are not cached; the cache is bounded."""
    header = _json_object(segment)
    return header.get("kid"), header.get("alg"), str(header.get("typ", "")).lower(), "crit" in header


def header_kid(token: str) -> str | None:
    """The ``kid`` of a well-formed JWS header (to look its key up), else None. Judges nothing."""
    if len(token) > MAX_TOKEN_CHARS or (match := SEGMENTS_RE.fullmatch(token)) is None:
        return None
    try:
        kid = _json_object(match[1]).get("kid")
    except TokenRejected:
        return None
    return kid if isinstance(kid, str) and KID_RE.fullmatch(kid) else None


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
    raw = _b64(segment)
    if raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:  # bounds the depth before json.loads recurses
        raise TokenRejected(RejectReason.MALFORMED)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenRejected(RejectReason.MALFORMED) from None
    if not isinstance(data, dict):
        raise TokenRejected(RejectReason.MALFORMED)
    return data


def _int_claim(value: object) -> bool:
    return type(value) is int and 0 <= value < MAX_INT_CLAIM


MAX_AMR = 8


def _auth_claims_ok(acr: object, amr: object, auth_time: object) -> bool:
    return (
        (acr is None or isinstance(acr, str))
        and isinstance(amr, list)
        and len(amr) <= MAX_AMR
        and all(isinstance(m, str) for m in amr)
        and (auth_time is None or _int_claim(auth_time))
    )


def _claims(data: dict[str, Any], kid: str) -> AccessClaims:
    strings = ("sub", "sid", "jti")
    numbers = ("exp", "nbf", "iat", "ssq")
    scope, client_id = data.get("scope", ""), data.get("client_id")
    acr, amr, auth_time = data.get("acr"), data.get("amr", []), data.get("auth_time")
    if (
        not all(isinstance(data[k], str) and data[k] for k in strings)
        or not all(_int_claim(data[k]) for k in numbers)
        or not isinstance(scope, str)
        or not (client_id is None or isinstance(client_id, str))
        or not _auth_claims_ok(acr, amr, auth_time)
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
        acr=acr,
        amr=tuple(amr),
        auth_time=auth_time,
    )
