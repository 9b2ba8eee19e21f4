"""The gateway's OAuth door, driven by a standard client (authlib + httpx) against the running
server: refresh, revoke and introspect with no custom code; every RFC 6749 section 5.2 error;
bad bodies refused with nothing appended; security headers on every answer."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import TokenPair
from ledger.domain.errors import SessionRevokedError
from ledger.streaming.store import EventStore
from projections.sessions.runner import run_sessions
from tests.support.edge import broadcaster, reason_of, running, until_rejected, verifier
from tests.support.gateway import SECURITY_HEADERS, Registry, gateway, gateway_config, write_registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return write_registry(tmp_path)


@pytest.fixture
async def base(settings: Settings, service: Any, registry: Registry) -> AsyncIterator[str]:
    async with running(run_sessions, settings), gateway(settings, gateway_config(registry)) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def oauth(registry: Registry, client_id: str) -> AsyncOAuth2Client:
    """A stock authlib client: client_secret_basic when it has a secret, else a public client."""
    secret = registry.secrets.get(client_id)
    method = "client_secret_basic" if secret else "none"
    return AsyncOAuth2Client(
        client_id,
        secret,
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        timeout=10,
    )


async def start(
    http: httpx.AsyncClient, base: str, registry: Registry, client_id: str, sub: str = "alice"
) -> dict[str, Any]:
    body = {"sub": sub, "client_id": client_id, "scopes": ["read"]}
    res = await http.post(
        f"{base}/backend/sessions", json=body, auth=("backend", registry.secrets["backend"])
    )
    assert res.status_code == 201, res.text
    return dict(res.json())


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def assert_headers(res: httpx.Response) -> None:
    missing = [h for h in SECURITY_HEADERS if h not in res.headers]
    assert not missing, (res.request.url.path, res.status_code, missing)
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert "Server" not in res.headers


async def test_a_standard_oauth_client_refreshes_revokes_and_introspects(
    base: str, http: httpx.AsyncClient, registry: Registry, store: EventStore
) -> None:
    first = await start(http, base, registry, "svc")
    async with oauth(registry, "svc") as svc, oauth(registry, "rs") as rs:
        token = await svc.refresh_token(f"{base}/oauth/token", refresh_token=first["refresh_token"])
        assert token["token_type"] == "Bearer" and token["expires_in"] > 0 and token["generation"] == 1
        retry = await svc.refresh_token(f"{base}/oauth/token", refresh_token=first["refresh_token"])
        assert retry["refresh_token"] == token["refresh_token"]  # a retry gets the same successor
        deadline = time.monotonic() + 15
        while not (
            answer := (
                await rs.introspect_token(f"{base}/oauth/introspect", token=token["refresh_token"])
            ).json()
        )["active"]:
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.05)
        assert answer["sub"] == "alice" and answer["client_id"] == "svc" and answer["expires_in"] > 0
        access = (await rs.introspect_token(f"{base}/oauth/introspect", token=token["access_token"])).json()
        assert access["active"] and access["token_type"] == "access_token" and 0 < access["expires_in"] <= 900
        revoked = await svc.revoke_token(
            f"{base}/oauth/revoke", token=token["refresh_token"], token_type_hint="refresh_token"
        )
        assert revoked.status_code == 200
        with pytest.raises(Exception, match="invalid_grant"):
            await svc.refresh_token(f"{base}/oauth/token", refresh_token=token["refresh_token"])
        deadline = time.monotonic() + 15
        while (await rs.introspect_token(f"{base}/oauth/introspect", token=token["access_token"])).json()[
            "active"
        ]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_a_public_client_is_bound_to_its_client_id(
    base: str, http: httpx.AsyncClient, registry: Registry, store: EventStore
) -> None:
    web = await start(http, base, registry, "web")
    svc = await start(http, base, registry, "svc")
    async with oauth(registry, "web") as client:
        token = await client.refresh_token(f"{base}/oauth/token", refresh_token=web["refresh_token"])
        assert token["generation"] == 1
        before = await store.last_seq()
        with pytest.raises(Exception, match="invalid_grant"):  # another client's token: refused, untouched
            await client.refresh_token(f"{base}/oauth/token", refresh_token=svc["refresh_token"])
        assert await store.last_seq() == before
    res = await http.post(
        f"{base}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": web["refresh_token"], "client_id": "svc"},
    )
    assert (
        res.status_code == 401 and res.json()["error"] == "invalid_client"
    )  # a confidential client needs its secret


async def test_access_token_revocation_reaches_the_edges(
    settings: Settings, base: str, http: httpx.AsyncClient, registry: Registry
) -> None:
    async with broadcaster(settings), verifier(settings) as edge:
        pair = await start(http, base, registry, "svc")
        assert reason_of(edge, pair["access_token"]) is None
        form = {"token": pair["access_token"], "token_type_hint": "access_token"}
        res = await http.post(f"{base}/oauth/revoke", data=form, auth=("svc", registry.secrets["svc"]))
        assert res.status_code == 200
        _, reason = await until_rejected(edge, pair["access_token"], limit=10)
        assert reason == "token_revoked"
        async with oauth(registry, "svc") as svc:  # the session goes on
            assert (await svc.refresh_token(f"{base}/oauth/token", refresh_token=pair["refresh_token"]))[
                "generation"
            ] == 1


async def test_rfc6749_errors(
    base: str, http: httpx.AsyncClient, registry: Registry, store: EventStore
) -> None:
    pair = await start(http, base, registry, "svc")
    auth = ("svc", registry.secrets["svc"])
    token_url = f"{base}/oauth/token"
    rt, form = pair["refresh_token"], {"Content-Type": "application/x-www-form-urlencoded"}
    grant = {"grant_type": "refresh_token", "refresh_token": rt}
    body_secret = {**grant, "client_secret": registry.secrets["svc"], "client_id": "svc"}
    forged = "rt1." + "A" * 22 + ".0." + "B" * 43
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": {"refresh_token": rt}, "auth": auth}, 400, "invalid_request"),
        ({"data": {"grant_type": "password", "username": "a"}, "auth": auth}, 400, "unsupported_grant_type"),
        ({"data": {"grant_type": "refresh_token"}, "auth": auth}, 400, "invalid_request"),
        ({"data": {**grant, "scope": "admin"}, "auth": auth}, 400, "invalid_scope"),
        ({"data": grant, "auth": ("svc", "wrong" * 8)}, 401, "invalid_client"),
        ({"data": grant, "auth": ("nobody", "x" * 40)}, 401, "invalid_client"),
        ({"data": grant}, 401, "invalid_client"),
        ({"data": body_secret}, 401, "invalid_client"),
        ({"data": grant, "auth": ("other", registry.secrets["other"])}, 400, "invalid_grant"),
        ({"data": {**grant, "refresh_token": forged}, "auth": auth}, 400, "invalid_grant"),
        ({"data": {**grant, "refresh_token": "garbage"}, "auth": auth}, 400, "invalid_grant"),
        ({"content": b"grant_type=a&grant_type=b", "auth": auth, "headers": form}, 400, "invalid_request"),
        ({"content": b"grant_type=\xff\xfe", "auth": auth, "headers": form}, 400, "invalid_request"),
        ({"json": grant, "auth": auth}, 415, "invalid_request"),
        ({"data": {**grant, "refresh_token": "x" * 20_000}, "auth": auth}, 413, "invalid_request"),
        ({"data": grant, "headers": {"Authorization": "Basic !!!"}}, 401, "invalid_client"),
    ]
    before = await store.last_seq()
    for kwargs, status, error in cases:
        res = await http.post(token_url, **kwargs)
        assert (res.status_code, res.json()["error"]) == (status, error), (kwargs.get("data"), res.text)
        assert res.headers["Cache-Control"] == "no-store" and res.headers["Pragma"] == "no-cache"
        assert_headers(res)
        if status == 401:
            assert res.headers["WWW-Authenticate"].startswith("Basic")
        assert pair["refresh_token"] not in res.text  # no error echoes a token
    assert await store.last_seq() == before  # nothing appended by any of them
    huge = await http.post(
        token_url,
        content=b"a" * 300_000,
        auth=auth,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert huge.status_code == 413
    assert await store.last_seq() == before


async def test_reuse_through_the_gateway_revokes_the_family(
    base: str, http: httpx.AsyncClient, registry: Registry, client: LedgerClient
) -> None:
    pair = await start(http, base, registry, "svc")
    async with oauth(registry, "svc") as svc:
        one = await svc.refresh_token(f"{base}/oauth/token", refresh_token=pair["refresh_token"])
        two = await svc.refresh_token(f"{base}/oauth/token", refresh_token=one["refresh_token"])
        with pytest.raises(Exception, match="invalid_grant"):  # two generations old: reuse
            await svc.refresh_token(f"{base}/oauth/token", refresh_token=pair["refresh_token"])
    with pytest.raises(SessionRevokedError):
        await client.rotate(two["refresh_token"])


async def test_revoke_and_introspect_errors(
    base: str, http: httpx.AsyncClient, registry: Registry, store: EventStore
) -> None:
    pair = await start(http, base, registry, "svc")
    auth = ("svc", registry.secrets["svc"])
    before = await store.last_seq()
    for token in ("unknown", "rt1." + "A" * 22 + ".0." + "B" * 43, "a.b.c"):
        res = await http.post(f"{base}/oauth/revoke", data={"token": token}, auth=auth)
        assert res.status_code == 200, res.text  # RFC 7009 2.2: an invalid token is not an error
    res = await http.post(
        f"{base}/oauth/revoke",
        data={"token": pair["refresh_token"]},
        auth=("other", registry.secrets["other"]),
    )
    assert res.status_code == 200  # another client's token: nothing happens
    assert await store.last_seq() == before
    res = await http.post(
        f"{base}/oauth/revoke", data={"token": "x", "token_type_hint": "id_token"}, auth=auth
    )
    assert res.status_code == 200  # a hint the server does not know is ignored (RFC 7009 2.1)
    res = await http.post(f"{base}/oauth/revoke", data={"token_type_hint": "refresh_token"}, auth=auth)
    assert res.status_code == 400 and res.json()["error"] == "invalid_request"
    res = await http.post(f"{base}/oauth/introspect", data={"token": pair["access_token"]}, auth=auth)
    assert res.status_code == 401 and res.json()["error"] == "invalid_client"  # not a resource server
    res = await http.post(
        f"{base}/oauth/introspect", data={"token": pair["access_token"], "client_id": "web"}
    )
    assert res.status_code == 401
    res = await http.post(
        f"{base}/oauth/introspect", data={"token": "x"}, auth=("rs", registry.secrets["rs"])
    )
    assert res.status_code == 200 and res.json() == {"active": False}
    assert await store.last_seq() == before


async def test_backend_session_start_is_for_authenticated_backends_only(
    base: str, http: httpx.AsyncClient, registry: Registry, store: EventStore
) -> None:
    url = f"{base}/backend/sessions"
    before = await store.last_seq()
    body = {"sub": "mallory", "client_id": "web"}
    attempts = [
        await http.post(url, json=body),  # a browser, or anyone: no credentials
        await http.post(url, json=body, headers={"Origin": "https://evil.example"}),
        await http.post(url, json=body, auth=("svc", registry.secrets["svc"])),  # a client, not a backend
        await http.post(url, json=body, auth=("backend", "x" * 43)),
        await http.post(
            url, json={"sub": "mallory", "client_id": "rs"}, auth=("backend", registry.secrets["backend"])
        ),
        await http.post(
            url, json={"sub": "", "client_id": "web"}, auth=("backend", registry.secrets["backend"])
        ),
        await http.post(
            url,
            json={"sub": "a b", "client_id": "web", "x": 1},
            auth=("backend", registry.secrets["backend"]),
        ),
        await http.post(
            url,
            content=b"{",
            auth=("backend", registry.secrets["backend"]),
            headers={"Content-Type": "application/json"},
        ),
        await http.post(
            url,
            content=b"[" * 5000,
            auth=("backend", registry.secrets["backend"]),
            headers={"Content-Type": "application/json"},
        ),
    ]
    assert [r.status_code for r in attempts] == [401, 401, 403, 401, 403, 400, 400, 400, 400]
    for res in attempts:
        assert_headers(res)
    assert await store.last_seq() == before


async def test_jwks_metadata_and_headers_on_every_answer(
    settings: Settings, base: str, http: httpx.AsyncClient
) -> None:
    jwks = await http.get(f"{base}/.well-known/jwks.json")
    assert jwks.status_code == 200 and jwks.headers["Content-Type"].startswith("application/jwk-set+json")
    assert (
        jwks.headers["Cache-Control"] == "public, max-age=15"
    )  # half the 30 s a new key waits before it signs
    keys = jwks.json()["keys"]
    assert len(keys) == 1 and keys[0]["alg"] == "ES256" and "d" not in keys[0]
    meta = (await http.get(f"{base}/.well-known/oauth-authorization-server")).json()
    assert (
        meta["token_endpoint"] == f"{base}/oauth/token"
        and meta["jwks_uri"] == f"{base}/.well-known/jwks.json"
    )
    assert meta["issuer"] == settings.issuer and meta["grant_types_supported"] == ["refresh_token"]
    for res in (
        jwks,
        await http.get(f"{base}/nowhere"),
        await http.get(f"{base}/oauth/token"),
        await http.post(f"{base}/session/refresh"),
        await http.get(f"{base}/openapi.json"),
        await http.get(f"{base}/session-ledger.js"),
        await http.request("OPTIONS", f"{base}/session/refresh", headers={"Origin": "https://evil.example"}),
    ):
        assert_headers(res)
        assert res.headers["Strict-Transport-Security"].startswith("max-age=")
    assert (await http.get(f"{base}/oauth/token")).status_code == 405


async def test_pair_model_matches_the_token_answer(
    base: str, http: httpx.AsyncClient, registry: Registry
) -> None:
    """The backend's answer carries the same fields a TokenPair has (expiry hints included)."""
    body = await start(http, base, registry, "web")
    pair = {k: body[k] for k in ("access_token", "refresh_token", "sid", "generation")}
    pair["access_expires_at"] = time.time() + body["expires_in"]
    pair["refresh_expires_at"], pair["session_expires_at"] = (
        body["idle_expires_at"],
        body["session_expires_at"],
    )
    TokenPair.model_validate({**pair, "sub": "alice"})
    assert body["session_expires_at"] >= body["idle_expires_at"] > time.time()


async def test_chunked_bodies_are_read_whole_and_bounded(
    base: str, http: httpx.AsyncClient, registry: Registry, store: EventStore
) -> None:
    pair = await start(http, base, registry, "svc")
    form = f"grant_type=refresh_token&refresh_token={pair['refresh_token']}".encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    auth = ("svc", registry.secrets["svc"])

    async def pieces(data: bytes, size: int) -> Any:
        for i in range(0, len(data), size):
            yield data[i : i + size]
            await asyncio.sleep(0.01)  # separate TCP segments: the server must keep reading

    res = await http.post(f"{base}/oauth/token", content=pieces(form, 7), headers=headers, auth=auth)
    assert res.status_code == 200 and res.json()["generation"] == 1, res.text
    before = await store.last_seq()
    res = await http.post(
        f"{base}/oauth/token", content=pieces(b"a" * 40_000, 4096), headers=headers, auth=auth
    )
    assert res.status_code == 413 and res.json()["error"] == "invalid_request"
    assert await store.last_seq() == before
