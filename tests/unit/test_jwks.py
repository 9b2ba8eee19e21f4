"""Published public keys are RFC 7517 JWKs that an independent JOSE library accepts.

Regression: RS256 keys were published with ``"key_ops": "['verify']"`` (a string), and the
``jose`` npm package refused every RS256 token.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from ledger.domain.access import Expectations, KeyRing, check_signature
from ledger.service.keys import JWK_MEMBERS, load_or_create_signing_key
from ledger.service.signer import AccessGrant, AccessTokenSigner, jws_signer


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_an_independent_jose_library_verifies_our_tokens_with_the_published_jwk(
    alg: str, tmp_path: Path
) -> None:
    key = load_or_create_signing_key(tmp_path, alg, None)
    jwk = key.public_jwk()
    assert set(jwk) <= set(JWK_MEMBERS) and all(isinstance(v, str) for v in jwk.values())
    assert jwk["use"] == "sig" and jwk["alg"] == alg and jwk["kid"] == key.kid
    signer = AccessTokenSigner(key, issuer="i", audience="a", ttl=timedelta(minutes=5))
    now = datetime.now(UTC)
    grant = AccessGrant(
        sub="alice", sid="A" * 22, scopes=("read",), session_started_at=now, session_start_seq=1
    )
    token, _ = signer.sign(grant, now=now, cap=now + timedelta(hours=1))
    keys = KeySet.import_key_set({"keys": [jwk]})
    decoded = jose_jwt.decode(token, keys, algorithms=[alg])
    assert decoded.claims["sub"] == "alice" and decoded.header["kid"] == key.kid
    assert decoded.claims["exp"] > time.time()


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_pyjwt_verifies_our_tokens_and_the_header_says_the_alg_and_kid(alg: str, tmp_path: Path) -> None:
    """The JWS is built by hand (``jws_signer``): PyJWT, too, must read it as a standard token."""
    key = load_or_create_signing_key(tmp_path, alg, None)
    signer = AccessTokenSigner(key, issuer="i", audience="a", ttl=timedelta(minutes=5))
    now = datetime.now(UTC)
    grant = AccessGrant(sub="bo", sid="B" * 22, scopes=(), session_started_at=now, session_start_seq=7)
    token, _ = signer.sign(grant, now=now, cap=now + timedelta(hours=1))
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}
    claims = jwt.decode(token, key.public, algorithms=[alg], audience="a", issuer="i")
    assert claims["ssq"] == 7 and len(claims["jti"]) == 32
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tampered, key.public, algorithms=[alg], audience="a", issuer="i")


def test_a_key_signs_only_its_own_algorithm() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="cannot sign"):
        jws_signer("ES256", p384)  # ES256 is P-256 only
    with pytest.raises(ValueError, match="cannot sign"):
        jws_signer("RS256", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="cannot sign"):
        jws_signer("HS256", ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_a_non_ascii_sub_reads_the_same_in_pyjwt_joserfc_and_the_edge(alg: str, tmp_path: Path) -> None:
    """The claims are UTF-8 JSON (orjson leaves ``ë`` unescaped where ``json.dumps`` wrote
    ``\\u00eb``): every reader must still see the same ``sub`` and scopes."""
    key = load_or_create_signing_key(tmp_path, alg, None)
    signer = AccessTokenSigner(key, issuer="i", audience="a", ttl=timedelta(minutes=5))
    now = datetime.now(UTC)
    sub, scopes = "zoë@exämple.org ✓", ("read", "wrïte")
    grant = AccessGrant(sub=sub, sid="C" * 22, scopes=scopes, session_started_at=now, session_start_seq=3)
    token, _ = signer.sign(grant, now=now, cap=now + timedelta(hours=1))
    by_pyjwt = jwt.decode(token, key.public, algorithms=[alg], audience="a", issuer="i")
    by_jose = jose_jwt.decode(token, KeySet.import_key_set({"keys": [key.public_jwk()]}), algorithms=[alg])
    ring = KeyRing()
    ring.add(key.kid, key.alg, key.public_jwk())
    by_edge = check_signature(token, ring, Expectations("i", "a", 10.0), now=time.time())
    assert by_pyjwt["sub"] == by_jose.claims["sub"] == by_edge.sub == sub
    assert by_pyjwt["scope"] == by_jose.claims["scope"] == "read wrïte"
    assert by_edge.scopes == scopes and by_edge.sid == "C" * 22
