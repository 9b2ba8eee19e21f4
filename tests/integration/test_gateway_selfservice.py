"""Issue 14 over HTTP: the gateway's self-service endpoints (my devices, revoke one, sign out the
others) authenticated by the presenting access token, and the RFC 9470 step-up challenge at the
edge sidecar and at the gateway. Real nats-server, real ledger service, sessions projection,
broadcaster, sidecar and gateway, driven by a real HTTP client on loopback."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from consumers.edge.sidecar import run_edge
from consumers.edge.verifier import EdgeVerifier
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import ClientContext
from ledger.domain.errors import LedgerError
from ledger.domain.ids import new_sid
from ledger.service.keys import SigningKey, generate, key_id
from ledger.streaming.embedded import free_port
from ledger.streaming.store import EventStore
from tests.integration.test_session_features import (
    FIREFOX,
    IPAD,
    IPHONE,
    last_rotation_at,
    poll,
    projection,
)
from tests.support.deploy import Secured
from tests.support.edge import broadcaster, claims_for, reason_of, running, service_key, sign, verifier
from tests.support.gateway import Registry, gateway, gateway_config, window_start_clock, write_registry

APP = "https://app.example"
CHALLENGE_RE = re.compile(r'([a-z_]+)="([^"]*)"')


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return write_registry(tmp_path)


@dataclass
class Stack:
    gateway: str  # base URL
    sidecar: str  # base URL
    edge: EdgeVerifier  # a second edge, in-process
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def stack(
    settings: Settings, registry: Registry, clock: Callable[[], float] = time.time, **config: Any
) -> AsyncIterator[Stack]:
    port = free_port()
    edge_settings = settings.model_copy(update={"edge_listen": f"127.0.0.1:{port}"})
    async with (
        broadcaster(settings),
        projection(settings),
        running(run_edge, edge_settings),
        verifier(settings) as edge,
        gateway(settings, gateway_config(registry, cors_origins=(APP,), **config), clock) as base,
        httpx.AsyncClient(timeout=15) as http,
    ):
        yield Stack(base, f"http://127.0.0.1:{port}", edge, http)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def parse_challenge(header: str) -> dict[str, str]:
    """``Bearer k="v", k="v"`` -> {k: v} (every parameter quoted, as RFC 9470's examples)."""
    scheme, _, params = header.partition(" ")
    assert scheme == "Bearer", header
    return dict(CHALLENGE_RE.findall(params))


async def devices_of(s: Stack, token: str, count: int) -> dict[str, Any]:
    """The device list once the projection shows ``count`` sessions (it follows the log)."""

    async def listed() -> dict[str, Any] | None:
        res = await s.http.get(f"{s.gateway}/session/devices", headers=bearer(token))
        if res.status_code == 200 and len(res.json()["sessions"]) == count:
            return dict(res.json())
        return None

    return dict(await poll(listed))


async def sidecar_status(s: Stack, token: str, **headers: str) -> httpx.Response:
    return await s.http.get(f"{s.sidecar}/auth", headers={**bearer(token), **headers})


async def test_three_devices_listed_revoked_and_signed_out_over_http(
    settings: Settings, service: Any, client: LedgerClient, store: EventStore, registry: Registry
) -> None:
    contexts = {
        "laptop": ClientContext(user_agent=FIREFOX, ip="203.0.113.7", label="Work laptop"),
        "phone": ClientContext(user_agent=IPHONE, label="My phone"),
        "tablet": ClientContext(user_agent=IPAD, label="Tablet"),
    }
    pairs = {
        name: await client.start_session("alice", client_id="web", client=ctx, acr="aal1")
        for name, ctx in contexts.items()
    }
    phone = await client.rotate(pairs["phone"].refresh_token, client=contexts["phone"])
    bob = await client.start_session("bob", client_id="web")
    laptop = pairs["laptop"].access_token
    async with stack(settings, registry) as s:
        listed = await devices_of(s, laptop, 3)
        res = await s.http.get(f"{s.gateway}/session/devices", headers={**bearer(laptop), "Origin": APP})
        assert res.headers["Cache-Control"] == "no-store"
        assert res.headers["Access-Control-Allow-Origin"] == APP
        assert res.headers["X-Content-Type-Options"] == "nosniff"
        by_sid = {v["sid"]: v for v in listed["sessions"]}
        assert {v["device"]["label"] for v in by_sid.values()} == {"Work laptop", "My phone", "Tablet"}
        assert [v["sid"] for v in by_sid.values() if v["current"]] == [pairs["laptop"].sid]
        assert by_sid[pairs["laptop"].sid]["device"]["device_class"] == "desktop"
        assert by_sid[pairs["phone"].sid]["device"]["device_class"] == "mobile"
        assert all(v["acr"] == "aal1" for v in by_sid.values())
        rotated_at = await last_rotation_at(store, phone.sid)  # last seen = the rotation event
        assert datetime.fromisoformat(by_sid[phone.sid]["last_seen_at"]) == rotated_at
        laptop_view = by_sid[pairs["laptop"].sid]
        assert laptop_view["last_seen_at"] == laptop_view["started_at"]  # never rotated
        assert "sub" not in laptop_view and bob.sid not in by_sid

        # another user's session answers exactly like an unknown one, and nothing happens to it
        foreign = await s.http.post(f"{s.gateway}/session/devices/{bob.sid}/revoke", headers=bearer(laptop))
        unknown = await s.http.post(f"{s.gateway}/session/devices/{new_sid()}/revoke", headers=bearer(laptop))
        assert foreign.status_code == unknown.status_code == 404
        assert (
            foreign.json() == unknown.json() == {"error": "not_found", "error_description": "no such session"}
        )
        malformed = await s.http.post(f"{s.gateway}/session/devices/not.a.sid/revoke", headers=bearer(laptop))
        assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_request"
        bob = await client.rotate(bob.refresh_token)  # alive

        # revoke the tablet from the laptop
        tablet = pairs["tablet"]
        res = await s.http.post(f"{s.gateway}/session/devices/{tablet.sid}/revoke", headers=bearer(laptop))
        assert res.status_code == 200 and res.json()["revoked"] is True, res.text
        assert res.headers["Cache-Control"] == "no-store"

        async def rejected_at_sidecar(token: str) -> bool:
            return (await sidecar_status(s, token)).status_code == 401

        await poll(lambda: rejected_at_sidecar(tablet.access_token))
        with pytest.raises(LedgerError):
            await client.rotate(tablet.refresh_token)
        await devices_of(s, laptop, 2)

        # sign out the others from the laptop: the phone dies at both edges, the laptop goes on
        res = await s.http.post(f"{s.gateway}/session/sign-out-others", headers=bearer(laptop))
        assert res.status_code == 200 and res.json()["kept_sid"] == pairs["laptop"].sid, res.text
        t0 = time.monotonic()
        await poll(lambda: rejected_at_sidecar(phone.access_token))

        async def rejected_in_process() -> bool:
            return reason_of(s.edge, phone.access_token) is not None

        await poll(rejected_in_process)
        print(f"sign-out-others over HTTP -> phone rejected at two edges in {time.monotonic() - t0:.3f} s")
        assert (await sidecar_status(s, laptop)).status_code == 200
        assert reason_of(s.edge, laptop) is None
        with pytest.raises(LedgerError):
            await client.rotate(phone.refresh_token)
        successor = await client.rotate(pairs["laptop"].refresh_token)  # keeps rotating
        assert (await sidecar_status(s, successor.access_token)).status_code == 200
        left = await devices_of(s, successor.access_token, 1)
        assert left["sessions"][0]["sid"] == pairs["laptop"].sid and left["sessions"][0]["current"]
        bob = await client.rotate(bob.refresh_token)  # another user is untouched
        assert (await sidecar_status(s, bob.access_token)).status_code == 200


async def test_step_up_challenge_at_the_sidecar_then_a_step_up_and_a_rotation_pass(
    settings: Settings, service: Any, client: LedgerClient, registry: Registry
) -> None:
    now = datetime.now(UTC)
    pair = await client.start_session("carol", client_id="web", acr="aal1", amr=["pwd"], auth_time=now)
    old = await client.start_session(
        "dave", client_id="web", acr="aal2", amr=["pwd", "otp"], auth_time=now - timedelta(hours=1)
    )
    plain = await client.start_session("erin", client_id="web")  # no authentication context
    async with stack(settings, registry) as s:
        res = await sidecar_status(s, pair.access_token)  # no requirement: the level is passed on
        assert res.status_code == 200 and res.headers["X-Auth-Acr"] == "aal1"

        res = await sidecar_status(s, pair.access_token, **{"X-Required-Acr": "aal2 aal3"})
        assert res.status_code == 401 and res.json() == {"error": "insufficient_user_authentication"}
        challenge = parse_challenge(res.headers["WWW-Authenticate"])
        assert challenge["error"] == "insufficient_user_authentication"
        assert challenge["acr_values"] == "aal2 aal3" and "max_age" not in challenge
        assert challenge["error_description"] and "X-Auth-Subject" not in res.headers
        forged_claim = {"X-Required-Acr": "aal2", "X-Auth-Acr": "aal2"}  # a client's own header
        assert (await sidecar_status(s, pair.access_token, **forged_claim)).status_code == 401
        assert (await sidecar_status(s, plain.access_token, **{"X-Required-Acr": "aal1"})).status_code == 401

        await client.step_up(pair.sid, sub="carol", acr="aal2", amr=["pwd", "otp"])
        stepped = await client.rotate(pair.refresh_token)
        res = await sidecar_status(s, stepped.access_token, **{"X-Required-Acr": "aal2 aal3"})
        assert res.status_code == 200 and res.headers["X-Auth-Acr"] == "aal2"
        assert res.headers["X-Auth-Amr"] == "pwd otp"
        still = await sidecar_status(s, pair.access_token, **{"X-Required-Acr": "aal2"})
        assert still.status_code == 401  # tokens issued before the step-up keep their level

        # max_age against auth_time
        res = await sidecar_status(
            s, old.access_token, **{"X-Required-Acr": "aal2", "X-Required-Max-Age": "600"}
        )
        assert res.status_code == 401
        challenge = parse_challenge(res.headers["WWW-Authenticate"])
        assert challenge["error"] == "insufficient_user_authentication" and challenge["max_age"] == "600"
        res = await sidecar_status(s, plain.access_token, **{"X-Required-Max-Age": "600"})
        assert parse_challenge(res.headers["WWW-Authenticate"])["max_age"] == "600"  # no auth_time
        assert (
            await sidecar_status(s, old.access_token, **{"X-Required-Max-Age": "7200"})
        ).status_code == 200
        await client.step_up(old.sid, sub="dave", acr="aal2", amr=["pwd", "otp"], auth_time=datetime.now(UTC))
        fresh = await client.rotate(old.refresh_token)
        res = await sidecar_status(
            s, fresh.access_token, **{"X-Required-Acr": "aal2", "X-Required-Max-Age": "600"}
        )
        assert res.status_code == 200

        # a malformed requirement is the proxy's mistake: fail closed
        for bad in (
            {"X-Required-Acr": 'aal2"'},
            {"X-Required-Max-Age": "soon"},
            {"X-Required-Max-Age": "-1"},
        ):
            assert (await sidecar_status(s, fresh.access_token, **bad)).status_code == 500
        # an invalid token is invalid_token whatever the requirement (no level oracle)
        res = await sidecar_status(s, "a.b.c", **{"X-Required-Acr": "aal2"})
        assert (
            res.status_code == 401
            and parse_challenge(res.headers["WWW-Authenticate"])["error"] == "invalid_token"
        )


async def test_the_gateway_asks_for_a_step_up_before_signing_out_the_others(
    settings: Settings, service: Any, client: LedgerClient, registry: Registry
) -> None:
    first = await client.start_session("frank", client_id="web", acr="aal1", auth_time=datetime.now(UTC))
    second = await client.start_session("frank", client_id="web", acr="aal1")
    async with stack(settings, registry, self_service_acr=("aal2",)) as s:
        await devices_of(s, first.access_token, 2)  # listing needs no step-up
        for url in (
            f"{s.gateway}/session/sign-out-others",
            f"{s.gateway}/session/devices/{second.sid}/revoke",
        ):
            res = await s.http.post(url, headers={**bearer(first.access_token), "Origin": APP})
            assert res.status_code == 401 and res.json()["error"] == "insufficient_user_authentication"
            assert res.headers["Access-Control-Allow-Origin"] == APP  # a cross-origin app reads it
            assert "WWW-Authenticate" in res.headers["Access-Control-Expose-Headers"]
            challenge = parse_challenge(res.headers["WWW-Authenticate"])
            assert (
                challenge["error"] == "insufficient_user_authentication" and challenge["acr_values"] == "aal2"
            )
        assert (await sidecar_status(s, second.access_token)).status_code == 200  # nothing happened
        await client.step_up(first.sid, sub="frank", acr="aal2", amr=["pwd", "otp"])
        stepped = await client.rotate(first.refresh_token)

        async def signed_out() -> bool:  # the projection must know the new token's level: it does
            res = await s.http.post(
                f"{s.gateway}/session/sign-out-others", headers=bearer(stepped.access_token)
            )
            return res.status_code == 200

        await poll(signed_out)
        await poll(lambda: _rejected(s, second.access_token))
        assert (await sidecar_status(s, stepped.access_token)).status_code == 200


async def _rejected(s: Stack, token: str) -> bool:
    return (await sidecar_status(s, token)).status_code == 401


def _foreign_key(settings: Settings) -> SigningKey:
    private = generate(settings.algorithm)
    return SigningKey(key_id(private.public_key()), settings.algorithm, private)


async def test_forged_expired_and_revoked_bearers_get_401_and_change_nothing(
    settings: Settings, service: Any, client: LedgerClient, nc: NATS, registry: Registry
) -> None:
    victim = await client.start_session("grace", client_id="web")
    other = await client.start_session("grace", client_id="web")
    ended = await client.start_session("grace", client_id="web")
    await client.revoke_session(ended.sid)
    key = service_key(settings)
    now = int(time.time())
    forged = {
        "foreign key": sign(_foreign_key(settings), claims_for(settings, sub="grace", sid=victim.sid)),
        "expired": sign(
            key,
            claims_for(settings, sub="grace", sid=victim.sid, exp=now - 3600, iat=now - 4000, nbf=now - 4000),
        ),
        "tampered": victim.access_token[:-4]
        + ("AAAA" if not victim.access_token.endswith("AAAA") else "BBBB"),
        "alg none": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJncmFjZSJ9.",
        "revoked session": ended.access_token,
        "refresh token": victim.refresh_token,
        "garbage": "x" * 40,
    }
    js = nc.jetstream()
    async with stack(settings, registry) as s:
        await devices_of(s, victim.access_token, 2)
        before = (await js.stream_info(settings.stream)).state.last_seq
        for name, token in forged.items():
            for method, path in (
                ("GET", "/session/devices"),
                ("POST", f"/session/devices/{other.sid}/revoke"),
                ("POST", "/session/sign-out-others"),
            ):
                res = await s.http.request(method, f"{s.gateway}{path}", headers=bearer(token))
                assert res.status_code == 401, (name, path, res.status_code)
                assert res.json()["error"] == "invalid_token", (name, path)
                challenge = res.headers["WWW-Authenticate"]
                assert parse_challenge(challenge)["error"] == "invalid_token", (name, challenge)
                assert token not in res.text and token not in challenge
        for headers in (
            {},
            {"Authorization": "Basic dTpw"},
            {"Cookie": f"__Secure-ledger-rt={victim.refresh_token}"},
        ):
            res = await s.http.post(f"{s.gateway}/session/sign-out-others", headers=headers)
            assert res.status_code == 401 and res.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await js.stream_info(settings.stream)).state.last_seq == before  # no event appended
        for pair in (victim, other):
            assert (await sidecar_status(s, pair.access_token)).status_code == 200
        await client.rotate(other.refresh_token)


async def test_the_gateway_user_may_do_self_service_and_nothing_more(
    secured: Secured, ledger_up: Settings
) -> None:
    """nats.conf gives the gateway the two self-service commands (the sessions query is tested
    above through the running gateway): they work as the ``gateway`` user."""
    app = await LedgerClient.connect(secured.url("app"))
    as_gateway = await LedgerClient.connect(secured.url("gateway"))
    try:
        here = await app.start_session("heidi")
        there = await app.start_session("heidi")
        third = await app.start_session("heidi")
        assert (
            await as_gateway.revoke_own_session(there.sid, sub="heidi", current_sid=here.sid)
        ).sid == there.sid
        done = await as_gateway.sign_out_others(sub="heidi", current_sid=here.sid)
        assert done.kept_sid == here.sid
        with pytest.raises(LedgerError):
            await app.rotate(third.refresh_token)
        assert (await app.rotate(here.refresh_token)).generation == 1
    finally:
        await as_gateway.close()
        await app.close()


async def test_self_service_is_rate_limited_per_session_by_verified_tokens_only(
    settings: Settings, service: Any, client: LedgerClient, registry: Registry
) -> None:
    mine = await client.start_session("ivan", client_id="web")
    victim = await client.start_session("judy", client_id="web")
    config = {"rate_per_session": 3, "rate_per_ip": 1000, "rate_window": "10m"}
    async with stack(settings, registry, window_start_clock(600), **config) as s:  # one window
        await devices_of(s, victim.access_token, 1)  # the projection knows both (one count spent)
        forged = sign(_foreign_key(settings), claims_for(settings, sub="judy", sid=victim.sid))
        for _ in range(5):  # forged tokens naming judy's session spend nothing of hers
            res = await s.http.get(f"{s.gateway}/session/devices", headers=bearer(forged))
            assert res.status_code == 401
        statuses = []
        for _ in range(5):
            res = await s.http.get(f"{s.gateway}/session/devices", headers=bearer(mine.access_token))
            statuses.append(res.status_code)
        assert statuses == [200, 200, 200, 429, 429], statuses
        assert 1 <= int(res.headers["Retry-After"]) <= 600 and res.json()["error"] == "rate_limited"
        res = await s.http.get(f"{s.gateway}/session/devices", headers=bearer(victim.access_token))
        assert res.status_code == 200, res.text  # judy's second count: not locked out
