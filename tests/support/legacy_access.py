"""The access-token check as it was before the fast path (regex split, urlsafe_b64decode,
``json.loads``, PyJWT's algorithm objects, pydantic-free claim checks): the oracle the
property tests compare ``ledger.domain.access.check_signature`` with, reason for reason."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from jwt.algorithms import Algorithm, get_default_algorithms

from ledger.domain.access import (
    MAX_CONTAINERS,
    MAX_INT_CLAIM,
    MAX_TOKEN_CHARS,
    REQUIRED,
    TOKEN_TYPES,
    AccessClaims,
    Expectations,
    KeyRing,
    RejectReason,
    TokenRejected,
    check_times,
)

SEGMENTS_RE = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)", re.ASCII)
PYJWT: dict[str, Algorithm] = get_default_algorithms()
MAX_AMR = 8


def check_signature(token: str, keys: KeyRing, expect: Expectations, *, now: float) -> AccessClaims:
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected(RejectReason.TOO_LARGE)
    match = SEGMENTS_RE.fullmatch(token)
    if match is None:
        raise TokenRejected(RejectReason.MALFORMED)
    header = _json_object(match[1])
    kid, alg = header.get("kid"), header.get("alg")
    typ, crit = str(header.get("typ", "")).lower(), "crit" in header
    key = keys.lookup(kid)
    if alg != key.alg:
        raise TokenRejected(RejectReason.ALGORITHM_NOT_ALLOWED)
    if typ not in TOKEN_TYPES:
        raise TokenRejected(RejectReason.WRONG_TYPE)
    if crit:
        raise TokenRejected(RejectReason.MALFORMED)
    signing_input = token[: match.end(2)].encode("ascii")
    if not PYJWT[key.alg].verify(signing_input, key.key, _b64(match[3])):
        raise TokenRejected(RejectReason.BAD_SIGNATURE)
    payload = _json_object(match[2])
    if any(name not in payload for name in REQUIRED):
        raise TokenRejected(RejectReason.MISSING_CLAIM)
    if payload["iss"] != expect.issuer:
        raise TokenRejected(RejectReason.WRONG_ISSUER)
    if payload["aud"] != expect.audience:
        raise TokenRejected(RejectReason.WRONG_AUDIENCE)
    claims = _claims(payload, key.kid)
    check_times(claims, now=now, leeway=expect.leeway)
    return claims


def _b64(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected(RejectReason.MALFORMED) from None


def _json_object(segment: str) -> dict[str, Any]:
    raw = _b64(segment)
    if raw.count(b"{") + raw.count(b"[") > MAX_CONTAINERS:
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


def _claims(data: dict[str, Any], kid: str) -> AccessClaims:
    scope, client_id = data.get("scope", ""), data.get("client_id")
    acr, amr, auth_time = data.get("acr"), data.get("amr", []), data.get("auth_time")
    if (
        not all(isinstance(data[k], str) and data[k] for k in ("sub", "sid", "jti"))
        or not all(_int_claim(data[k]) for k in ("exp", "nbf", "iat", "ssq"))
        or not isinstance(scope, str)
        or not (client_id is None or isinstance(client_id, str))
        or not (acr is None or isinstance(acr, str))
        or not isinstance(amr, list)
        or len(amr) > MAX_AMR
        or not all(isinstance(m, str) for m in amr)
        or not (auth_time is None or _int_claim(auth_time))
    ):
        raise TokenRejected(RejectReason.INVALID_CLAIMS)
    return AccessClaims(
        sub=data["sub"], sid=data["sid"], jti=data["jti"], scopes=tuple(scope.split()),
        exp=data["exp"], nbf=data["nbf"], iat=data["iat"], ssq=data["ssq"], kid=kid,
        client_id=client_id, acr=acr, amr=tuple(amr), auth_time=auth_time,
    )  # fmt: skip
