"""The fast token check (``ledger.domain.access.check_signature``) against the version it
replaced (``tests.support.legacy_access``): for genuine, tampered, forged and malformed tokens
of every algorithm, the same verdict and the same reason. Hypothesis mutates genuine tokens
character by character and signs arbitrary headers and payloads (JSON or not), so that the
parser, the JSON path and the claim checks are all reached past a good signature."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger.domain.access import (
    AccessClaims,
    Expectations,
    KeyRing,
    RejectReason,
    TokenRejected,
    check_signature,
    signature_check,
)
from ledger.service.keys import SigningKey, generate, key_id
from tests.support import legacy_access

NOW = 1_800_000_000
EXPECT = Expectations("session-ledger", "api", 10.0)
KEYS = {
    alg: SigningKey(key_id((p := generate(alg)).public_key()), alg, p) for alg in ("ES256", "EdDSA", "RS256")
}
RETIRED = SigningKey(key_id((r := generate("ES256")).public_key()), "ES256", r)
STRANGER = SigningKey(key_id((s := generate("ES256")).public_key()), "ES256", s)  # not in the ring


def ring() -> KeyRing:
    keys = KeyRing()
    for key in (*KEYS.values(), RETIRED):
        keys.add(key.kid, key.alg, key.public_jwk())
    keys.retire(RETIRED.kid)
    return keys


RING = ring()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign_raw(header: bytes, payload: bytes, key: SigningKey) -> str:
    """A JWS over arbitrary header and payload bytes (no library would encode most of these)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64(signature)}"


def header_of(key: SigningKey, **extra: Any) -> dict[str, Any]:
    return {"alg": key.alg, "kid": key.kid, "typ": "at+jwt", **extra}


def claims_of(**extra: Any) -> dict[str, Any]:
    return {"iss": "session-ledger", "aud": "api", "sub": "alice", "sid": "S" * 22, "jti": "j" * 32,
            "iat": NOW - 5, "nbf": NOW - 5, "exp": NOW + 900, "scope": "read write", "ssq": 3,
            **extra}  # fmt: skip


def token(key: SigningKey, header: Any = None, claims: Any = None) -> str:
    head = header_of(key) if header is None else header
    body = claims_of() if claims is None else claims
    return sign_raw(json.dumps(head).encode(), json.dumps(body).encode(), key)


def verdict(check: Any, tok: str, now: float = NOW) -> tuple[str, object]:
    try:
        return "accepted", check(tok, RING, EXPECT, now=now)
    except TokenRejected as err:
        return "rejected", err.reason


def same_verdict(tok: str, now: float = NOW) -> tuple[str, object]:
    new, old = verdict(check_signature, tok, now), verdict(legacy_access.check_signature, tok, now)
    assert new == old, f"{tok!r}: new {new}, before {old}"
    return new


GENUINE = {alg: token(key) for alg, key in KEYS.items()}


def forms(key: SigningKey) -> dict[str, tuple[str, RejectReason | None]]:
    """(token, reason or None for accepted) for one key: the hand-written cases."""
    good = token(key)
    head, body, sig = good.split(".")
    other = STRANGER if key.alg == "ES256" else SigningKey(key.kid, key.alg, generate(key.alg))
    stranger_head = token(STRANGER, header_of(STRANGER)).split(".")[0]
    claims_json = json.dumps(claims_of()).encode()
    tampered = b64(json.dumps(claims_of(sub="admin")).encode())
    M, U, A = RejectReason.MALFORMED, RejectReason.INVALID_CLAIMS, RejectReason.ALGORITHM_NOT_ALLOWED

    def payload(raw: bytes) -> str:  # our header, these payload bytes, signed
        return sign_raw(json.dumps(header_of(key)).encode(), raw, key)

    def claims(**changes: Any) -> str:
        return token(key, claims=claims_of(**changes))

    def without(*names: str, **changes: Any) -> str:
        return token(key, claims={k: v for k, v in claims_of(**changes).items() if k not in names})

    def headed(**changes: Any) -> str:
        return token(key, header_of(key, **changes))

    def b64_header(**changes: Any) -> str:
        return b64(json.dumps(header_of(key, **changes)).encode())

    return {
        "genuine": (good, None),
        "typ upper case": (headed(typ="AT+JWT"), None),
        "typ application/at+jwt": (headed(typ="application/at+jwt"), None),
        "extra claims and amr": (claims(amr=["pwd", "otp"], acr="x", auth_time=NOW), None),
        "whitespace around the payload": (payload(b" \n" + claims_json + b" "), None),
        "utf-16 payload": (payload(json.dumps(claims_of()).encode("utf-16")), None),
        "utf-8 BOM payload": (payload(b"\xef\xbb\xbf" + claims_json), None),
        "lone surrogate in sub": (payload(claims_json.replace(b'"alice"', b'"\\ud800"')), None),
        # json.loads reads bytes with "surrogatepass": an encoded surrogate passed before too
        "raw surrogate bytes": (payload(claims_json.replace(b"alice", b"\xed\xa0\x80")), None),
        "duplicate sub, last wins": (payload(claims_json[:-1] + b', "sub": "bob"}'), None),
        "NaN in an unknown claim": (payload(claims_json[:-1] + b', "x": NaN}'), None),
        "trailing data": (payload(claims_json + b"{}"), M),
        "payload a list": (token(key, claims=[claims_of()]), M),
        "payload not JSON": (payload(b"\xff\xfe\x00garbage"), M),
        "nine containers": (claims(x=[[[[[[[[]]]]]]]]), M),
        "header a list": (sign_raw(b"[]", claims_json, key), M),
        "alg none": (f"{b64_header(alg='none')}.{body}.", A),
        "alg HS256": (f"{b64_header(alg='HS256')}.{body}.{sig}", A),
        "alg missing": (token(key, header={"kid": key.kid, "typ": "at+jwt"}), A),
        "kid unknown": (token(STRANGER, header_of(STRANGER)), RejectReason.UNKNOWN_KID),
        "kid retired": (token(RETIRED, header_of(RETIRED)), RejectReason.KEY_RETIRED),
        "kid a list": (headed(kid=[key.kid]), RejectReason.UNKNOWN_KID),
        "kid missing": (token(key, header={"alg": key.alg, "typ": "at+jwt"}), RejectReason.UNKNOWN_KID),
        "typ JWT": (headed(typ="JWT"), RejectReason.WRONG_TYPE),
        "typ a list": (headed(typ=["at+jwt"]), RejectReason.WRONG_TYPE),
        "crit": (headed(crit=["exp"]), M),
        "crit and wrong typ": (headed(crit=["exp"], typ="JWT"), RejectReason.WRONG_TYPE),
        "other key, our kid": (token(other, header_of(key)), RejectReason.BAD_SIGNATURE),
        "tampered payload": (f"{head}.{tampered}.{sig}", RejectReason.BAD_SIGNATURE),
        "empty signature": (f"{head}.{body}.", RejectReason.BAD_SIGNATURE),
        "signature cut short": (f"{head}.{body}.{sig[:-4]}", RejectReason.BAD_SIGNATURE),
        "signature 4k+1": (f"{head}.{body}.{sig}{'A' * ((1 - len(sig)) % 4 or 4)}", M),
        "padding": (f"{good}==", M),
        "standard alphabet": (f"{head}.{body}.{sig.replace('-', '+').replace('_', '/')}+/", M),
        "bad char in payload, unknown kid": (f"{stranger_head}.{body}!.{sig}", M),
        "non-ASCII": (f"{head}.{body}é.{sig}", M),
        "four segments": (f"{good}.{sig}", M),
        "two segments": (f"{head}.{body}", M),
        "empty header": (f".{body}.{sig}", M),
        "empty payload": (f"{head}..{sig}", M),
        "space": (f" {good}", M),
        "too large": (claims(pad="x" * 9000), RejectReason.TOO_LARGE),
        "empty": ("", M),
        "missing ssq": (without("ssq"), RejectReason.MISSING_CLAIM),
        "wrong iss": (claims(iss="x"), RejectReason.WRONG_ISSUER),
        "aud list": (claims(aud=["api"]), RejectReason.WRONG_AUDIENCE),
        "missing and wrong iss": (without("sub", iss="x"), RejectReason.MISSING_CLAIM),
        "exp 10**400": (claims(exp=10**400), U),
        "exp float": (claims(exp=float(NOW + 900)), U),
        "exp true": (claims(exp=True), U),
        "ssq negative": (claims(ssq=-1), U),
        "ssq 2**53": (claims(ssq=2**53), U),
        # orjson reads an integer past 64 bits as a float, json.loads as an int: same verdicts
        "exp 2**64": (claims(exp=2**64), U),
        "auth_time 2**70": (claims(auth_time=2**70), U),
        "unknown claim 2**80": (claims(x=2**80), None),
        "duplicate exp, the last expired": (payload(claims_json[:-1] + b', "exp": 1}'), RejectReason.EXPIRED),
        "sub empty": (claims(sub=""), U),
        "jti a number": (claims(jti=7), U),
        "scope a list": (claims(scope=["read"]), U),
        "client_id a number": (claims(client_id=1), U),
        "acr a list": (claims(acr=["x"]), U),
        "amr null": (claims(amr=None), U),
        "amr a string": (claims(amr="pwd"), U),
        "amr nine": (claims(amr=["pwd"] * 9), U),
        "amr a number in it": (claims(amr=["pwd", 1]), U),
        "auth_time a string": (claims(auth_time="now"), U),
        "expired and invalid": (claims(exp=NOW - 60, sub=""), U),
        "expired": (claims(exp=NOW - 60), RejectReason.EXPIRED),
        "expired inside leeway": (claims(exp=NOW - 5), None),
        "nbf ahead": (claims(nbf=NOW + 60), RejectReason.NOT_YET_VALID),
        "iat ahead": (claims(iat=NOW + 60), RejectReason.NOT_YET_VALID),
        "nbf inside leeway": (claims(nbf=NOW + 5), None),
    }  # fmt: skip


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_every_form_gets_the_verdict_and_reason_it_had(alg: str) -> None:
    for name, (tok, reason) in forms(KEYS[alg]).items():
        kind, value = same_verdict(tok)
        if reason is None:
            assert kind == "accepted", f"{name}: {value}"
        else:
            assert (kind, value) == ("rejected", reason), name


def test_accepted_claims_are_complete() -> None:
    tok = token(
        KEYS["EdDSA"], claims=claims_of(amr=["pwd"], acr="urn:x", auth_time=NOW - 60, client_id="app")
    )
    claims = check_signature(tok, RING, EXPECT, now=NOW)
    assert claims == AccessClaims(
        sub="alice", sid="S" * 22, jti="j" * 32, scopes=("read", "write"), exp=NOW + 900,
        nbf=NOW - 5, iat=NOW - 5, ssq=3, kid=KEYS["EdDSA"].kid, client_id="app", acr="urn:x",
        amr=("pwd",), auth_time=NOW - 60,
    )  # fmt: skip
    with pytest.raises(AttributeError):
        claims.sub = "bob"  # type: ignore[misc]


def test_es256_high_s_verifies_through_cryptography_and_der_is_refused() -> None:
    """ECDSA's (r, n - s) is as valid as (r, s): both verifiers accept it; a DER signature or a
    64-byte string that is not r||s of this input is refused."""
    key = KEYS["ES256"]
    head, body, sig = GENUINE["ES256"].split(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    r, s = int.from_bytes(raw[:32]), int.from_bytes(raw[32:])
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    flipped = f"{head}.{body}.{b64(r.to_bytes(32) + (n - s).to_bytes(32))}"
    assert same_verdict(flipped)[0] == "accepted"
    der = encode_dss_signature(r, s)
    assert same_verdict(f"{head}.{body}.{b64(der)}") == ("rejected", RejectReason.BAD_SIGNATURE)
    assert same_verdict(f"{head}.{body}.{b64(bytes(64))}") == ("rejected", RejectReason.BAD_SIGNATURE)
    assert decode_dss_signature(der) == (r, s) and key.alg == "ES256"


def test_a_key_that_does_not_fit_its_algorithm_is_refused_when_learnt() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValueError):
        signature_check("ES256", p384)
    with pytest.raises(ValueError):
        signature_check("RS256", KEYS["ES256"].public)
    with pytest.raises(ValueError):
        signature_check("HS256", KEYS["RS256"].public)
    with pytest.raises(ValueError):
        KeyRing().add("k", "none", KEYS["ES256"].public_jwk() | {"alg": "none"})
    check = signature_check("EdDSA", KEYS["EdDSA"].public)
    good = GENUINE["EdDSA"]
    signing_input, _, sig = good.rpartition(".")
    raw = base64.urlsafe_b64decode(sig + "==")
    assert check(signing_input.encode(), raw)
    assert not check(signing_input.encode(), raw[:63]) and not check(signing_input.encode(), raw + b"\0")


ALPHABET = st.sampled_from([*'AZaz09-_.=+/! \té\x00{}"', "", "..", "ey", "%"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alg=st.sampled_from(sorted(KEYS)), data=st.data())
@example(alg="ES256", data=None)
def test_mutated_tokens_get_the_same_verdict(alg: str, data: st.DataObject | None) -> None:
    tok = GENUINE[alg]
    if data is not None:
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(tok)))
            cut = data.draw(st.integers(0, 3))
            tok = tok[:at] + data.draw(ALPHABET) + tok[at + cut :]
    same_verdict(tok)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
CLAIM_NAMES = ["iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "ssq", "scope", "client_id", "acr",
               "amr", "auth_time", "typ", "alg", "kid", "crit"]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alg=st.sampled_from(sorted(KEYS)),
    header_changes=st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "x"]), JSON, max_size=2),
    claim_changes=st.dictionaries(st.sampled_from(CLAIM_NAMES), JSON, max_size=3),
    dropped=st.sets(st.sampled_from(CLAIM_NAMES), max_size=2),
    now=st.sampled_from([NOW, NOW - 3600, NOW + 3600, NOW + 895, NOW + 910]),
)
def test_signed_headers_and_claims_get_the_same_verdict(
    alg: str, header_changes: dict[str, Any], claim_changes: dict[str, Any], dropped: set[str], now: int
) -> None:
    key = KEYS[alg]
    claims = {k: v for k, v in claims_of(**claim_changes).items() if k not in dropped}
    same_verdict(token(key, header_of(key, **header_changes), claims), now)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alg=st.sampled_from(sorted(KEYS)),
    header=st.one_of(st.binary(max_size=40), st.just(b'{"alg":"ES256"}')),
    payload=st.one_of(
        st.binary(max_size=60),
        st.builds(lambda pre, post: pre + json.dumps(claims_of()).encode() + post,
                  st.sampled_from([b"", b" ", b"\xef\xbb\xbf", b"\x00"]),
                  st.sampled_from([b"", b"\n", b"x", b"\x00"])),
        st.builds(lambda enc: json.dumps(claims_of()).encode(enc),
                  st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])),
    ),
    good_header=st.booleans(),
)  # fmt: skip
def test_signed_bytes_get_the_same_verdict(
    alg: str, header: bytes, payload: bytes, good_header: bool
) -> None:
    key = KEYS[alg]
    head = json.dumps(header_of(key)).encode() if good_header else header
    same_verdict(sign_raw(head, payload, key))
