"""The JWKS URL serves an independent JOSE library (joserfc) for every algorithm; the gateway's
introspection, the NATS introspection and the edge give one verdict per token (invariant 11);
the OpenAPI document matches the running server's routes and answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from consumers.gateway.app import build_app, run_gateway
from consumers.gateway.context import Gateway
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.service.keyops import rotate_key
from ledger.service.keys import SigningKey, generate, key_id
from ledger.streaming.connection import connect
from projections.sessions.runner import run_sessions
from tests.support.edge import broadcaster, claims_for, reason_of, running, service_key, sign, verifier
from tests.support.gateway import Registry, gateway, gateway_config, write_registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return write_registry(tmp_path)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
async def test_an_independent_jose_library_verifies_tokens_from_the_jwks_url(
    alg: str, settings_for: Any, services: Any, registry: Registry
) -> None:
    settings: Settings = settings_for(algorithm=alg)
    await services.start(settings)
    async with (
        gateway(settings, gateway_config(registry)) as base,
        httpx.AsyncClient(timeout=10) as http,
        await LedgerClient.connect(settings.nats_url) as client,
    ):
        pair = await client.start_session("alice", client_id="web", scopes=["read"])
        keys = KeySet.import_key_set((await http.get(f"{base}/.well-known/jwks.json")).json())
        token = jose_jwt.decode(pair.access_token, keys, algorithms=[alg])
        assert token.claims["sub"] == "alice" and token.header["alg"] == alg
        tampered = pair.access_token[:-6] + (
            "AAAAAA" if not pair.access_token.endswith("AAAAAA") else "BBBBBB"
        )
        with pytest.raises((JoseError, ValueError)):
            jose_jwt.decode(tampered, keys, algorithms=[alg])


@pytest.fixture
async def stack(settings: Settings, service: Any, registry: Registry) -> AsyncIterator[tuple[str, Any]]:
    async with (
        broadcaster(settings),
        running(run_sessions, settings),
        verifier(settings) as edge,
        gateway(settings, gateway_config(registry)) as base,
    ):
        yield base, edge


async def test_gateway_nats_introspection_and_edge_agree_on_every_token(
    settings: Settings, stack: tuple[str, Any], client: LedgerClient, registry: Registry
) -> None:
    base, edge = stack
    live = await client.start_session("alice", client_id="svc")
    revoked = await client.start_session("bob", client_id="svc")
    single = await client.start_session("carol", client_id="svc")
    await client.revoke_session(revoked.sid)
    await client.revoke_access(single.access_token)
    key = service_key(settings)
    corpus = {
        "genuine": live.access_token,
        "session revoked": revoked.access_token,
        "token revoked": single.access_token,
        "tampered": live.access_token[:-4] + ("AAAA" if not live.access_token.endswith("AAAA") else "BBBB"),
        "wrong issuer": sign(key, claims_for(settings, iss="elsewhere")),
        "foreign key": sign(_other_key(settings), claims_for(settings)),
        "expired": sign(key, claims_for(settings, exp=int(time.time()) - 3600)),
        "none": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
        "refresh token": live.refresh_token,
    }
    expected = {"genuine": True}
    async with httpx.AsyncClient(timeout=10) as http:

        async def gateway_says(token: str) -> bool:
            res = await http.post(
                f"{base}/oauth/introspect", data={"token": token}, auth=("rs", registry.secrets["rs"])
            )
            return bool(res.json()["active"])

        deadline = time.monotonic() + 20
        while True:  # wait until the projection and the edge have caught up with the revocations
            verdicts = {
                name: (await gateway_says(t), (await client.introspect(t)).active, reason_of(edge, t) is None)
                for name, t in corpus.items()
                if name != "refresh token"
            }
            if all(v == (expected.get(n, False),) * 3 for n, v in verdicts.items()):
                break
            assert time.monotonic() < deadline, [
                (n, v) for n, v in verdicts.items() if v != (expected.get(n, False),) * 3
            ]
            await asyncio.sleep(0.1)
        assert (
            await gateway_says(live.refresh_token)
            == (await client.introspect(live.refresh_token)).active
            is True
        )


async def test_the_openapi_document_matches_the_running_server(
    settings: Settings, service: Any, registry: Registry
) -> None:
    async with gateway(settings, gateway_config(registry)) as base, httpx.AsyncClient(timeout=10) as http:
        doc = (await http.get(f"{base}/openapi.json")).json()
        assert doc["openapi"].startswith("3.1") and doc["servers"] == [{"url": base}]
        documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
        app = build_app(cast(Gateway, None))
        served = {(r.resource.canonical, r.method) for r in app.router.routes() if r.resource is not None}
        served.discard(("/oauth/token", "HEAD"))
        assert documented == {(p, m) for p, m in served if m != "HEAD"}
        for path, method in sorted(documented):  # every bare call answers a documented status
            res = await http.request(method, f"{base}{path}")
            answers = doc["paths"][path][method.lower()]["responses"]
            assert str(res.status_code) in answers, (method, path, res.status_code)
            if res.status_code >= 400 and "application/json" in answers[str(res.status_code)].get(
                "content", {}
            ):
                assert "error" in res.json()
        token_schema = doc["components"]["schemas"]["Token"]
        pair = (
            await http.post(
                f"{base}/backend/sessions",
                json={"sub": "alice", "client_id": "web"},
                auth=("backend", registry.secrets["backend"]),
            )
        ).json()
        assert set(token_schema["required"]) <= set(pair) <= set(token_schema["properties"])


def _other_key(settings: Settings) -> SigningKey:
    """A key of the same algorithm that the ledger never published."""
    private = generate(settings.algorithm)
    return SigningKey(key_id(private.public_key()), settings.algorithm, private)


async def test_a_gateway_started_first_waits_for_the_ledger_and_its_jwks_follows_rotation(
    settings: Settings, services: Any, registry: Registry, nats_server: Any
) -> None:
    config = gateway_config(registry)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_gateway(settings, stop, ready, config=config))
    try:
        await services.start(settings)  # the ledger (and its stream) only now
        await asyncio.wait_for(ready.wait(), 60)
        assert not task.done()
        nc = await connect(settings.nats_url, "test-operator")
        try:
            added = await rotate_key(nc, settings, now=datetime.now(UTC), activate_in=timedelta(seconds=30))
        finally:
            await nc.close()
        async with httpx.AsyncClient(timeout=10) as http:
            deadline = time.monotonic() + 15
            url = f"http://{config.listen}/.well-known/jwks.json"
            while added.kid not in {k["kid"] for k in (await http.get(url)).json()["keys"]}:
                assert time.monotonic() < deadline, "the JWKS never showed the next key"
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
