"""Attack tokens: each is rejected by the verifier with the right reason, and the sidecar
answers every one of them with an opaque 401 and keeps serving (counted per reason in
/healthz). Real ledger service (its key comes from the stream), real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization

from consumers.edge.sidecar import run_edge
from ledger.client import LedgerClient
from ledger.service.keys import SigningKey, generate, public_jwk
from ledger.streaming.embedded import free_port
from tests.support.edge import claims_for, reason_of, running, service_key, sign, verifier


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_jwt(header: dict[str, Any], claims: dict[str, Any], sign_with: bytes | None = None) -> str:
    """A JWT built by hand, for headers and algorithms no library would produce."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if sign_with is None:
        return head + "."
    return head + "." + b64(hmac.new(sign_with, head.encode(), hashlib.sha256).digest())


def tampered(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"], claims["scope"] = "admin", "admin"
    return f"{head}.{b64(json.dumps(claims).encode())}.{sig}"


def attack_tokens(settings: Any, genuine: str) -> list[tuple[str, str, str]]:
    """(name, token, expected reason)."""
    key = service_key(settings)
    attacker = SigningKey("attacker", "ES256", generate("ES256"))
    rogue = SigningKey(key.kid, "ES256", attacker.private)  # claims our kid, signs with its own key
    pem = key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ok = claims_for(settings)
    elsewhere = {"jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/cert.pem"}
    now = int(time.time())
    return [
        ("alg none", raw_jwt({"alg": "none", "kid": key.kid, "typ": "at+jwt"}, ok), "algorithm_not_allowed"),
        (
            "HS256 with the public key as secret",
            raw_jwt({"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}, ok, sign_with=pem),
            "algorithm_not_allowed",
        ),
        (
            "RS256 header on an EC key",
            raw_jwt({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, ok, pem),
            "algorithm_not_allowed",
        ),
        ("unknown kid", sign(attacker, ok), "unknown_kid"),
        ("kid path traversal", sign(attacker, ok, kid="../../../../dev/null"), "unknown_kid"),
        ("kid SQL injection", sign(attacker, ok, kid="x' UNION SELECT 'k' --"), "unknown_kid"),
        ("kid not a string", raw_jwt({"alg": "ES256", "kid": 7, "typ": "at+jwt"}, ok, pem), "unknown_kid"),
        ("jku/x5u elsewhere, attacker kid", sign(attacker, ok, **elsewhere), "unknown_kid"),
        ("jku/x5u elsewhere, our kid", sign(rogue, ok, **elsewhere), "bad_signature"),
        (
            "embedded jwk, our kid",
            sign(rogue, ok, jwk=public_jwk(attacker.public, key.kid, "ES256")),
            "bad_signature",
        ),
        ("expired", sign(key, claims_for(settings, exp=now - 600, iat=now - 900, nbf=now - 900)), "expired"),
        ("not yet valid", sign(key, claims_for(settings, nbf=now + 600, iat=now)), "not_yet_valid"),
        ("wrong audience", sign(key, claims_for(settings, aud="other-api")), "wrong_audience"),
        ("audience list", sign(key, claims_for(settings, aud=[settings.audience, "x"])), "wrong_audience"),
        ("wrong issuer", sign(key, claims_for(settings, iss="https://evil.example")), "wrong_issuer"),
        ("tampered payload", tampered(genuine), "bad_signature"),
        ("100 kB token", sign(key, claims_for(settings, pad="x" * 74_000)), "too_large"),
        ("not a JWT", "definitely.not.a-jwt", "malformed"),
        ("missing ssq", sign(key, {k: v for k, v in ok.items() if k != "ssq"}), "missing_claim"),
        ("ssq not an int", sign(key, claims_for(settings, ssq="0")), "invalid_claims"),
        ("ID token typ", sign(key, ok, typ="JWT"), "wrong_type"),
        ("unknown critical header", sign(key, ok, crit=["exp"]), "malformed"),
        ("padded segments", genuine.replace(".", "=.", 1), "malformed"),
        ("issued in the future", sign(key, claims_for(settings, iat=now + 600)), "not_yet_valid"),
        (
            "EdDSA header on an EC key",
            raw_jwt({"alg": "EdDSA", "kid": key.kid, "typ": "at+jwt"}, ok, pem),
            "algorithm_not_allowed",
        ),
    ]


async def test_attack_tokens_rejected_with_reason_and_sidecar_survives(
    client: LedgerClient, settings_for: Any
) -> None:
    port = free_port()
    settings = settings_for(edge_listen=f"127.0.0.1:{port}")
    genuine = (await client.start_session("grace", scopes=["read", "write"])).access_token
    attacks = attack_tokens(settings, genuine)
    assert 95_000 < len(dict((n, t) for n, t, _ in attacks)["100 kB token"]) < 105_000
    key = service_key(settings)
    ignored = sign(key, claims_for(settings, sub="grace"), jku="https://evil.example/jwks.json")
    async with verifier(settings) as v:
        got = [(name, reason_of(v, token)) for name, token, _ in attacks]
        assert got == [(name, reason) for name, _, reason in attacks]
        assert reason_of(v, genuine) is None
        assert reason_of(v, ignored) is None  # jku/x5u are never fetched nor trusted
    base = f"http://127.0.0.1:{port}"
    async with running(run_edge, settings), aiohttp.ClientSession() as http:
        for name, token, _ in attacks:
            async with http.get(f"{base}/auth", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 401, name
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"], name
                assert "X-Auth-Subject" not in resp.headers
        async with http.get(f"{base}/auth", headers={"Authorization": f"Bearer {genuine}"}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Auth-Subject"] == "grace"
        async with http.get(f"{base}/healthz") as resp:
            counts = (await resp.json())["counts"]
        for _, _, reason in attacks:
            assert counts.get(f"rejected.{reason}", 0) >= 1, reason
        assert counts["accepted"] == 1
