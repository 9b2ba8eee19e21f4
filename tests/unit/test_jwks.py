"""Published public keys are RFC 7517 JWKs that an independent JOSE library accepts.

Regression: RS256 keys were published with ``"key_ops": "['verify']"`` (a string), and the
``jose`` npm package refused every RS256 token.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from ledger.service.keys import JWK_MEMBERS, load_or_create_signing_key
from ledger.service.signer import AccessGrant, AccessTokenSigner


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
