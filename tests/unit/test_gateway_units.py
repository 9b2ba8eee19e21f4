"""The gateway's pure parts: CSRF and CORS decisions, security headers, strict forms, client
authentication, rate windows, the token notice and the fold of a single-token revocation."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumers.gateway.clients import Client, Registry, authenticate, hash_secret, new_secret, secret_matches
from consumers.gateway.errors import OAuthError, from_ledger
from consumers.gateway.forms import parse_form
from consumers.gateway.headers import cors_headers, csrf_refusal, preflight_headers, security_headers
from consumers.gateway.ratelimit import ident_key, over, window_at
from consumers.gateway.settings import GatewaySettings
from ledger.contracts.notices import notice_for, notice_subject
from ledger.domain import decide
from ledger.domain.access import AccessClaims
from ledger.domain.errors import BadRequest, ConfigError, TokenReused, Unavailable
from ledger.domain.events import AccessTokenRevoked, RecordedEvent, decode_event, encode_event
from ledger.streaming import credentials
from projections.sessions.fold import EMPTY, RevokedTokenRecord, apply
from session_ledger.cli import main

OWN, APP = "http://gw.example", "https://app.example"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def csrf(**headers: str) -> str | None:
    return csrf_refusal(headers, own_origin=OWN, allowed=(APP,), csrf_header="X-Session-Ledger")


def test_csrf_needs_the_header_an_allowed_origin_and_never_cross_site() -> None:
    assert csrf(**{"X-Session-Ledger": "1", "Origin": APP, "Sec-Fetch-Site": "same-site"}) is None
    assert csrf(**{"X-Session-Ledger": "1", "Origin": OWN, "Sec-Fetch-Site": "same-origin"}) is None
    assert csrf(**{"X-Session-Ledger": "1"}) is None  # no browser: no CSRF vector
    assert csrf(**{"Origin": APP}) == "missing_csrf_header"  # a form post cannot set it
    assert csrf(**{"X-Session-Ledger": "0", "Origin": APP}) == "missing_csrf_header"
    assert csrf(**{"X-Session-Ledger": "1", "Origin": "https://evil.example"}) == "origin_not_allowed"
    assert csrf(**{"X-Session-Ledger": "1", "Origin": "null"}) == "origin_not_allowed"
    assert csrf(**{"X-Session-Ledger": "1", "Sec-Fetch-Site": "cross-site"}) == "cross_site"


def test_cors_answers_only_allowed_origins_and_never_a_wildcard_with_credentials() -> None:
    assert cors_headers(APP, (APP,), credentials=True) == {
        "Access-Control-Allow-Origin": APP, "Vary": "Origin", "Access-Control-Allow-Credentials": "true",
    }  # fmt: skip
    assert cors_headers("https://evil.example", (APP,), credentials=True) == {"Vary": "Origin"}
    assert cors_headers(None, (APP,), credentials=True) == {"Vary": "Origin"}
    assert preflight_headers("https://evil.example", (APP,), "X-Session-Ledger") is None
    allowed = preflight_headers(APP, (APP,), "X-Session-Ledger")
    assert allowed is not None and "X-Session-Ledger" in allowed["Access-Control-Allow-Headers"]
    with pytest.raises(ConfigError):
        GatewaySettings(cors_origins=("*",))


def test_security_headers_and_no_store_unless_a_cache_policy_was_chosen() -> None:
    added = security_headers({}, hsts=True)
    assert added["Cache-Control"] == "no-store" and added["X-Content-Type-Options"] == "nosniff"
    assert (
        "frame-ancestors 'none'" in added["Content-Security-Policy"]
        and "max-age=" in added["Strict-Transport-Security"]
    )
    assert "Cache-Control" not in security_headers({"Cache-Control": "public, max-age=15"}, hsts=False)
    assert "Strict-Transport-Security" not in security_headers({}, hsts=False)


@pytest.mark.parametrize(
    "body", [b"a=1&a=2", b"\xff=1", b"a", b"&".join(b"k%d=1" % i for i in range(40)), b"a=%ZZ&b"]
)
def test_malformed_forms_are_invalid_request(body: bytes) -> None:
    with pytest.raises(OAuthError) as err:
        parse_form(body)
    assert err.value.error == "invalid_request" and err.value.status == 400


def test_forms_parse_plain_and_encoded_values() -> None:
    assert parse_form(b"grant_type=refresh_token&refresh_token=rt1.a%2Eb") == {
        "grant_type": "refresh_token", "refresh_token": "rt1.a.b",
    }  # fmt: skip
    assert parse_form(b"") == {}


def registry() -> tuple[Registry, str]:
    secret = new_secret()
    clients = (Client(client_id="svc", secret_hash=hash_secret(secret)), Client(client_id="web"))
    return Registry(clients=clients), secret


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_client_authentication() -> None:
    reg, secret = registry()
    assert authenticate(reg, basic("svc", secret), {}).client_id == "svc"
    assert authenticate(reg, None, {"client_id": "web"}).client_id == "web"
    failures = [
        (basic("svc", secret[:-1] + "x"), {}),
        (basic("web", "x" * 40), {}),  # a public client has no secret to present
        (basic("nobody", secret), {}),
        (None, {"client_id": "svc"}),  # a confidential client without its secret
        (None, {"client_id": "svc", "client_secret": secret}),  # only Basic is accepted
        (None, {}),
        ("Bearer abc", {}),
        ("Basic %%%", {}),
    ]
    for authorization, form in failures:
        with pytest.raises(OAuthError) as err:
            authenticate(reg, authorization, form)
        assert err.value.error == "invalid_client" and err.value.status == 401, (authorization, form)
    with pytest.raises(OAuthError, match="invalid_request"):
        authenticate(reg, basic("svc", secret), {"client_id": "web"})


def test_secrets_are_stored_salted_and_short_ones_refused() -> None:
    secret = new_secret()
    one, two = hash_secret(secret), hash_secret(secret)
    assert one != two and secret not in one and secret_matches(secret, one) and secret_matches(secret, two)
    assert not secret_matches(secret + "x", one)
    with pytest.raises(ConfigError):
        hash_secret("short")


def test_ledger_refusals_become_invalid_grant_without_an_oracle() -> None:
    assert from_ledger(TokenReused("reuse")).error == "invalid_grant"
    assert from_ledger(BadRequest("x")).error == "invalid_request"
    assert from_ledger(Unavailable("x")).status == 503


def test_rate_windows_and_keys() -> None:
    window = window_at(119.5, 60)
    assert (window.index, window.retry_after) == (1, 1)
    assert window_at(120.0, 60).index == 2 and window_at(120.0, 60).retry_after == 60
    assert ident_key("ip", "10.0.0.1") != ident_key("session", "10.0.0.1")
    assert "10.0.0.1" not in ident_key("ip", "10.0.0.1")
    assert not over(5, 5) and over(6, 5)


def claims(exp: datetime) -> AccessClaims:
    ts = int(NOW.timestamp())
    return AccessClaims(sub="alice", sid="S" * 22, jti="j" * 32, scopes=(), exp=int(exp.timestamp()), nbf=ts,
                        iat=ts, ssq=1, kid="k")  # fmt: skip


def test_revoking_one_access_token_is_a_pure_decision_a_notice_and_a_fold_step() -> None:
    assert decide.revoke_access(claims(NOW - timedelta(seconds=1)), now=NOW, event_id="e" * 32) is None
    event = decide.revoke_access(claims(NOW + timedelta(minutes=5)), now=NOW, event_id="e" * 32)
    assert isinstance(event, AccessTokenRevoked) and decode_event(encode_event(event)) == event
    rec = RecordedEvent(event, seq=7, subject=f"ledger.ev.t.{event.jti}.revoked")
    notice = notice_for(rec)
    assert notice is not None and (notice.kind, notice.jti, notice.sid) == ("token", event.jti, event.sid)
    assert notice_subject(notice) == f"ledger.revoked.token.{event.jti}"
    state = apply(EMPTY, rec)
    assert isinstance(state.records[f"t.{event.jti}"], RevokedTokenRecord) and state.checkpoint == 7
    assert apply(state, rec) == state  # a redelivery changes nothing


def test_a_data_dir_from_before_the_gateway_user_gets_its_password_added(tmp_path: Path) -> None:
    old = {user: "p" + "a" * 32 for user in credentials.USERS if user != "gateway"}
    path = credentials.credentials_path(tmp_path)
    path.write_text(json.dumps(old))
    path.chmod(0o600)
    passwords = credentials.load_or_create(tmp_path)
    assert {k: passwords[k] for k in old} == old and passwords["gateway"].startswith("p")
    assert path.stat().st_mode & 0o777 == 0o600
    assert credentials.load_or_create(tmp_path) == passwords


def test_gateway_secret_prints_a_secret_and_an_entry_the_registry_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["gateway-secret", "backend", "--start-sessions-for", "web", "--introspect"]) == 0
    out = json.loads(capsys.readouterr().out)
    client = Registry.model_validate({"clients": [out["registry_entry"]]}).clients[0]
    assert client.secret_hash is not None and secret_matches(out["client_secret"], client.secret_hash)
    assert client.start_sessions_for == ("web",) and client.introspect
    assert out["client_secret"] not in json.dumps(out["registry_entry"])
