"""The one access-token verifier: the edge, introspection and the HTTP gateway all call it.

A pure check of (token, known keys, expectations, now) -> claims or ``TokenRejected``.
The algorithm a token may use is the one bound to its key when the key was learnt,
never the one its header asks for. Every input is bounded: token size, JSON depth
(a deeply nested header is ``malformed``, not a crash), and integer claims must fit
in 53 bits (an ``exp`` of 10**400 is ``invalid_claims``). Clients see one opaque
"invalid token"; ``reason`` is for logs and metrics.
"""

from __future__ import annotations

import binascii
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import jwt
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ledger.domain.events import SigningKeyActivated, SigningKeyAdded, SigningKeyRetired
from ledger.domain.ids import KID_RE
from ledger.domain.keys import proof_kid, statement_of

MAX_TOKEN_CHARS = 8192  # a real access token is well under 1 kB
TOKEN_TYPES = ("at+jwt", "application/at+jwt")
ALGORITHMS = ("ES256", "EdDSA", "RS256")  # the allow-list: a key is learnt only for one of these
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


class AccessClaims(NamedTuple):
    """The verified claims of one access token: immutable (a NamedTuple, not a frozen
    dataclass: building a frozen dataclass of 13 fields cost 2 µs, a tenth of the Python
    a cold verify spent besides its signature)."""

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


SignatureCheck = Callable[[bytes, bytes], bool]  # (signing input, raw signature) -> genuine?
ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
PKCS1V15, SHA256 = padding.PKCS1v15(), hashes.SHA256()


def signature_check(alg: str, key: object) -> SignatureCheck:
    """The signature check for ``key`` under ``alg``, straight on ``cryptography``: what PyJWT's
    algorithm objects do (JWS raw r||s to DER for ECDSA, PKCS#1 v1.5 with SHA-256 for RS256),
    minus their per-call type dispatch. A key that does not fit ``alg`` (another curve, another
    key type) is refused here, once, when the key is learnt."""
    if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        es256: ec.EllipticCurvePublicKey = key

        def check_es256(data: bytes, sig: bytes) -> bool:
            if len(sig) != 64:  # JWS ECDSA: exactly r||s, 32 bytes each (RFC 7518 3.4), never DER
                return False
            der = encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
            try:
                es256.verify(der, data, ECDSA_SHA256)
            except InvalidSignature:
                return False
            return True

        return check_es256
    if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        eddsa, size = key, 64 if isinstance(key, ed25519.Ed25519PublicKey) else 114

        def check_eddsa(data: bytes, sig: bytes) -> bool:
            if len(sig) != size:
                return False
            try:
                eddsa.verify(sig, data)
            except InvalidSignature:
                return False
            return True

        return check_eddsa
    if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
        rs256: rsa.RSAPublicKey = key

        def check_rs256(data: bytes, sig: bytes) -> bool:
            try:
                rs256.verify(sig, data, PKCS1V15, SHA256)
            except InvalidSignature:
                return False
            return True

        return check_rs256
    raise ValueError(f"a {type(key).__name__} cannot verify {alg!r} (allowed: {', '.join(ALGORITHMS)})")


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    kid: str
    alg: str
    key: Any  # a cryptography public key object, typed by ``alg``
    check: SignatureCheck  # the signature check for ``alg`` on this key, fixed when it was learnt

    @classmethod
    def of(cls, kid: str, alg: str, jwk: dict[str, str]) -> VerifyingKey:
        if alg not in ALGORITHMS:
            raise ValueError(f"key algorithm must be one of {', '.join(ALGORITHMS)}")
        key = jwt.PyJWK(dict(jwk), algorithm=alg).key
        return cls(kid, alg, key, signature_check(alg, key))


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
        return cls(root=VerifyingKey.of(jwk.get("kid", "root"), jwk.get("alg", ""), jwk))

    def add(self, kid: str, alg: str, jwk: dict[str, str]) -> None:
        """Learn a key unconditionally (a key the caller already trusts)."""
        if jwk.get("alg", alg) != alg or jwk.get("kid", kid) != kid:
            raise ValueError("JWK does not match its event")
        self.keys[kid] = VerifyingKey.of(kid, alg, jwk)

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
    """Header -> key -> signature -> claims, each failure with its reason.

    The hot path of every verifier, so written for speed without dropping a check: one
    translation of the whole token to the standard base64 alphabet (any byte outside the
    base64url alphabet and ``.`` is refused up front, as the old regex did), one split, the
    header parsed once per distinct header (memoised), the signature checked straight on the
    ``cryptography`` key for the key's own algorithm, the claims decoded by orjson (with
    ``json.loads``' verdicts) and judged with plain comparisons. The reasons and their order
    are those of the regex, ``urlsafe_b64decode``, ``json.loads`` and PyJWT version it
    replaces (``tests/support/legacy_access.py`` is that version; property tests hold the two
    to the same verdicts).
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected(RejectReason.TOO_LARGE)
    try:
        text = token.encode("ascii")
    except UnicodeEncodeError:
        raise TokenRejected(RejectReason.MALFORMED) from None
    standard = text.translate(TO_STANDARD_B64)
    if b"!" in standard:
        raise TokenRejected(RejectReason.MALFORMED)
    try:
        head, body, sig = standard.split(b".")
    except ValueError:
        raise TokenRejected(RejectReason.MALFORMED) from None
    if not head or not body:
        raise TokenRejected(RejectReason.MALFORMED)
    kid, alg, header_fault = _header(head)
    key = None if kid is None else keys.keys.get(kid)
    if key is None or kid in keys.retired:
        key = keys.lookup(kid)  # raises, with the reason
    if alg != key.alg:  # the key's own algorithm, never the header's choice
        raise TokenRejected(RejectReason.ALGORITHM_NOT_ALLOWED)
    if header_fault is not None:
        raise TokenRejected(header_fault)
    if not key.check(text[: len(head) + 1 + len(body)], _b64(sig)):
        raise TokenRejected(RejectReason.BAD_SIGNATURE)
    return _claims(_json_object(_b64(body)), key.kid, expect, now)


def _standard_b64_table() -> bytes:
    """base64url -> base64 byte for byte; every byte outside base64url and ``.`` becomes ``!``."""
    urlsafe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    table = bytearray(b"!" * 256)
    for byte in urlsafe:
        table[byte] = byte
    table[ord("-")], table[ord("_")] = ord("+"), ord("/")
    return bytes(table)


TO_STANDARD_B64 = _standard_b64_table()
PADDING = (b"", b"===", b"==", b"=")  # by length mod 4; "===" makes a 4k+1 segment fail, as it must


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header(segment: bytes) -> tuple[str | None, object, RejectReason | None]:
    """(kid if it is one, alg, the header's own fault) of a header segment, in the order they
    are judged: the kid first (unknown or retired, decided per token: the ring changes), then
    the key's algorithm, then ``typ`` and ``crit``. Pure, so memoised: every token of one key
    carries the same header. Malformed segments raise and are not cached; the cache is bounded."""
    header = _json_object(_b64(segment))
    kid = header.get("kid")
    fault = None
    if str(header.get("typ", "")).lower() not in TOKEN_TYPES:
        fault = RejectReason.WRONG_TYPE
    elif "crit" in header:
        fault = RejectReason.MALFORMED  # no critical extension is understood here
    usable_kid = kid if isinstance(kid, str) and KID_RE.fullmatch(kid) else None
    return usable_kid, header.get("alg"), fault


def check_times(claims: AccessClaims, *, now: float, leeway: float) -> None:
    """Validity in time (also re-checked for a token whose signature was verified earlier)."""
    if now >= claims.exp + leeway:
        raise TokenRejected(RejectReason.EXPIRED)
    if now < claims.nbf - leeway or now < claims.iat - leeway:
        raise TokenRejected(RejectReason.NOT_YET_VALID)


def _b64(segment: bytes) -> bytes:
    """Decode a segment already in the standard alphabet (``TO_STANDARD_B64``): exactly what
    ``base64.urlsafe_b64decode`` did after its own translation, without its wrappers."""
    try:
        return binascii.a2b_base64(segment + PADDING[len(segment) & 3])
    except binascii.Error:
        raise TokenRejected(RejectReason.MALFORMED) from None


def _json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, as ``json.loads`` would read it. The fast path is orjson (1.3 instead of
    3.7 us for a payload of claims); whatever orjson refuses (NaN, a lone surrogate escape,
    anything malformed) goes through ``json.loads`` itself, so every input keeps its verdict.
    Where the two parse both, they agree on what ``_claims`` judges: orjson reads an integer
    beyond 64 bits as a float, which is refused as the out-of-range integer was."""
    if raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:  # bounds the depth before the parser recurses
        raise TokenRejected(RejectReason.MALFORMED)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json_loads(raw)
    if type(data) is not dict:
        raise TokenRejected(RejectReason.MALFORMED)
    return data


def _json_loads(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise TokenRejected(RejectReason.MALFORMED) from None
    if not isinstance(data, dict):
        raise TokenRejected(RejectReason.MALFORMED)
    return data


MAX_AMR = 8
NO_AMR: list[str] = []


def _claims(data: dict[str, Any], kid: str, expect: Expectations, now: float) -> AccessClaims:
    """Required claims present (``missing_claim``), ``iss`` and ``aud`` exactly ours (one string,
    no list), every claim of its type and range (``invalid_claims``), then the times."""
    try:
        iss, aud, sub, sid, jti = data["iss"], data["aud"], data["sub"], data["sid"], data["jti"]
        iat, nbf, exp, ssq = data["iat"], data["nbf"], data["exp"], data["ssq"]
    except KeyError:  # REQUIRED, each of them
        raise TokenRejected(RejectReason.MISSING_CLAIM) from None
    if iss != expect.issuer:
        raise TokenRejected(RejectReason.WRONG_ISSUER)
    if aud != expect.audience:
        raise TokenRejected(RejectReason.WRONG_AUDIENCE)
    get = data.get
    scope, client_id, acr, amr, auth_time = (
        get("scope", ""), get("client_id"), get("acr"), get("amr", NO_AMR), get("auth_time")
    )  # fmt: skip
    # JSON gives exact types, so ``type(x) is int`` also refuses ``true`` (a bool is an int).
    if not (
        type(sub) is str and sub and type(sid) is str and sid and type(jti) is str and jti
        and type(exp) is int and 0 <= exp < MAX_INT_CLAIM
        and type(nbf) is int and 0 <= nbf < MAX_INT_CLAIM
        and type(iat) is int and 0 <= iat < MAX_INT_CLAIM
        and type(ssq) is int and 0 <= ssq < MAX_INT_CLAIM
        and type(scope) is str
        and (client_id is None or type(client_id) is str)
        and (acr is None or type(acr) is str)
        and (auth_time is None or (type(auth_time) is int and 0 <= auth_time < MAX_INT_CLAIM))
        and (amr is NO_AMR or (type(amr) is list and len(amr) <= MAX_AMR
                               and all(type(a) is str for a in amr)))
    ):  # fmt: skip
        raise TokenRejected(RejectReason.INVALID_CLAIMS)
    leeway = expect.leeway
    if now >= exp + leeway:
        raise TokenRejected(RejectReason.EXPIRED)
    if now < nbf - leeway or now < iat - leeway:
        raise TokenRejected(RejectReason.NOT_YET_VALID)
    return AccessClaims(
        sub, sid, jti, tuple(scope.split()), exp, nbf, iat, ssq, kid, client_id, acr, tuple(amr), auth_time
    )
