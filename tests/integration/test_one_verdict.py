"""Invariant 11, one verdict per token: the edge and introspection judge every access token
with the same code (``ledger.domain.access``) and give the same answer.

A corpus of genuine, tampered and forged tokens, all about one real, live session (so the
session's state cannot explain a difference), goes to a real edge verifier and to the
sessions projection's introspection over NATS. Before the shared verifier, the two
differed on ``typ``, on a list-valued ``aud`` and on clock leeway.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from consumers.edge.verifier import EdgeVerifier, TokenRejected
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.service.keys import SigningKey
from projections.sessions.runner import run_sessions
from tests.support.edge import running, service_key, verifier

Make = Callable[[dict[str, Any]], str]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_jws(header: object, payload: object, key: SigningKey) -> str:
    """Sign arbitrary JSON (PyJWT would refuse to encode some of these shapes)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    algo = jwt.get_algorithm_by_name(key.alg)
    return f"{signing_input}.{b64(algo.sign(signing_input.encode(), key.private))}"


def corpus(genuine: str, key: SigningKey) -> dict[str, str]:
    claims: dict[str, Any] = jwt.decode(genuine, options={"verify_signature": False})
    header = {"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}
    now = int(time.time())

    def with_(**changes: Any) -> str:
        return raw_jws(header, {**claims, **changes}, key)

    def without(name: str) -> str:
        return raw_jws(header, {k: v for k, v in claims.items() if k != name}, key)

    def headed(**changes: Any) -> str:
        return raw_jws({**header, **changes}, claims, key)

    other = ec.generate_private_key(ec.SECP256R1())
    head, body, sig = genuine.split(".")
    return {
        "genuine": genuine,
        "resigned": with_(),
        "typ application/at+jwt": headed(typ="application/at+jwt"),
        "typ JWT": headed(typ="JWT"),
        "no typ": raw_jws({"alg": key.alg, "kid": key.kid}, claims, key),
        "aud list": with_(aud=[claims["aud"]]),
        "aud list with another": with_(aud=[claims["aud"], "other"]),
        "wrong aud": with_(aud="other"),
        "wrong iss": with_(iss="someone-else"),
        "expired inside leeway": with_(exp=now - 3),
        "expired beyond leeway": with_(exp=now - 60),
        "nbf inside leeway": with_(nbf=now + 3),
        "nbf beyond leeway": with_(nbf=now + 120),
        "iat in the future": with_(iat=now + 120),
        "missing ssq": without("ssq"),
        "missing jti": without("jti"),
        "ssq as string": with_(ssq=str(claims["ssq"])),
        "exp 10**400": raw_jws(header, {**claims, "exp": 10**400}, key),
        "exp float": with_(exp=float(claims["exp"])),
        "negative iat": with_(iat=-1),
        "nested header": raw_jws({**header, "x": json.loads("[" * 200 + "]" * 200)}, claims, key),
        "crit header": headed(crit=["exp"]),
        "alg none": f"{b64(json.dumps({**header, 'alg': 'none'}).encode())}.{body}.",
        "alg HS256": jwt.encode(
            claims, "secret" * 8, algorithm="HS256", headers={"kid": key.kid, "typ": "at+jwt"}
        ),
        "other key": jwt.encode(claims, other, algorithm="ES256", headers={"kid": key.kid, "typ": "at+jwt"}),
        "unknown kid": headed(kid="nobody"),
        "kid with dots": headed(kid="a.b"),
        "tampered payload": f"{head}.{b64(json.dumps({**claims, 'sub': 'admin'}).encode())}.{sig}",
        "padding": f"{genuine}==",
        "too large": with_(pad="x" * 9000),
        "empty": "",
        "garbage": "not-a-token",
    }


def edge_verdict(edge: EdgeVerifier, token: str) -> bool:
    try:
        edge.verify(token)
    except TokenRejected:
        return False
    return True


async def test_edge_and_introspection_agree_on_every_token(client: LedgerClient, settings: Settings) -> None:
    pair = await client.start_session("verdict-user", scopes=["read"])
    key = service_key(settings)
    tokens = corpus(pair.access_token, key)
    async with running(run_sessions, settings), verifier(settings) as edge:
        deadline = time.monotonic() + 15
        while not (await client.introspect(pair.access_token)).active:  # projection caught up
            assert time.monotonic() < deadline, "the projection never saw the session"
        verdicts = {
            name: (edge_verdict(edge, t), (await client.introspect(t)).active) for name, t in tokens.items()
        }
    disagree = {name: v for name, v in verdicts.items() if v[0] != v[1]}
    assert not disagree, f"(edge, introspection) differ: {disagree}"
    accepted = sorted(name for name, (edge_ok, _) in verdicts.items() if edge_ok)
    assert accepted == sorted(
        ["genuine", "resigned", "typ application/at+jwt", "expired inside leeway", "nbf inside leeway"]
    )


@pytest.mark.parametrize("name", ["nested header", "exp 10**400"])
def test_hostile_shapes_are_refused_not_crashing(name: str, tmp_path: Any) -> None:
    """Regression (trust-boundaries finding 6 and 7): a RecursionError and an OverflowError."""
    from ledger.domain.access import Expectations, KeyRing, RejectReason, check_signature
    from ledger.service.keys import load_or_create_signing_key

    key = load_or_create_signing_key(tmp_path, "ES256", None)
    ring = KeyRing()
    ring.add(key.kid, key.alg, key.public_jwk())
    now = int(time.time())
    claims = {"iss": "i", "aud": "a", "sub": "s", "sid": "A" * 22, "jti": "j", "iat": now, "nbf": now,
              "exp": now + 60, "ssq": 1}  # fmt: skip
    good = raw_jws({"alg": key.alg, "kid": key.kid, "typ": "at+jwt"}, claims, key)
    assert check_signature(good, ring, Expectations("i", "a"), now=now).sub == "s"
    token = corpus(good, key)[name]
    with pytest.raises(TokenRejected) as err:
        check_signature(token, ring, Expectations("i", "a"), now=now)
    assert err.value.reason in (RejectReason.MALFORMED, RejectReason.INVALID_CLAIMS)
