"""The gateway's NATS user can do what the gateway needs and nothing more (invariant 10), tested
as attacks with its real credentials against nats.conf; and the gateway works as that user,
with the rate limit shared by two instances through the ledger-made counter stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from consumers.broadcast import DURABLE
from ledger.client import LedgerClient
from ledger.config import Settings
from tests.support.deploy import Secured, refused_publish, refused_subscribe
from tests.support.gateway import Registry, gateway, gateway_config, window_start_clock, write_registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return write_registry(tmp_path)


@pytest.fixture
async def app(secured: Secured, ledger_up: Settings) -> AsyncIterator[LedgerClient]:
    client = await LedgerClient.connect(secured.url("app"))
    yield client
    await client.close()


def as_gateway(settings: Settings, secured: Secured) -> Settings:
    return settings.model_copy(update={"nats_url": secured.url("gateway")})


async def test_the_gateway_user_cannot_do_more_than_the_gateway_needs(
    secured: Secured, ledger_up: Settings, app: LedgerClient
) -> None:
    victim = await app.start_session("victim")
    nc = await secured.connect("gateway")
    try:
        for subject in (
            f"ledger.ev.s.{victim.sid}.revoked",  # write an event
            "ledger.ev.u._dmljdGlt.revoked",
            f"ledger.revoked.session.{victim.sid}",  # forge a notice
            "ledger.cmd.revoke",  # revoke by sid: no proof of possession
            "ledger.cmd.revoke_user",
            "ledger.q.session",  # read any session by sid (listing is by user: self-service)
            "ledger.heartbeat.broadcast",  # keep dead edges serving
            "$JS.API.STREAM.DELETE.LEDGER",
            "$JS.API.STREAM.CREATE.CAPTURE",  # a stream on ledger.cmd.> would capture refresh tokens
            "$JS.API.STREAM.UPDATE.LEDGER_GATEWAY_RATE",
            "$JS.API.STREAM.PURGE.LEDGER_GATEWAY_RATE",
            "$JS.API.DIRECT.GET.LEDGER",  # read any event by a body-named subject
            f"$JS.API.DIRECT.GET.LEDGER.ledger.ev.s.{victim.sid}.*",
            "$JS.API.CONSUMER.CREATE.LEDGER",
            f"$JS.API.CONSUMER.CREATE.LEDGER.{DURABLE}",
            f"$JS.API.CONSUMER.CREATE.LEDGER.{DURABLE}.ledger.ev.k.>",
            "$JS.API.CONSUMER.CREATE.LEDGER.mine.ledger.ev.>",  # a reader of every event
            f"$JS.API.CONSUMER.DELETE.LEDGER.{DURABLE}",
            f"$KV.LEDGER_SESSIONS_1.s.{victim.sid}",
        ):
            await refused_publish(secured, nc, "gateway", subject)
        for subject in (
            "ledger.cmd.>",
            "ledger.cmd.rotate",
            "_INBOX.app.>",
            "ledger.revoked.>",
            "ledger.ev.>",
        ):
            await refused_subscribe(secured, nc, "gateway", subject)
    finally:
        await nc.close()
    assert (await app.rotate(victim.refresh_token)).generation == 1  # the victim is unaffected


async def test_no_other_role_can_touch_the_rate_counters(secured: Secured, ledger_up: Settings) -> None:
    for user in ("app", "edge", "projector", "analyst"):
        nc = await secured.connect(user)
        try:
            await refused_publish(secured, nc, user, "ledger.rate.ip.abc.1")
        finally:
            await nc.close()


async def test_the_gateway_serves_as_its_own_user_and_two_instances_share_one_limit(
    secured: Secured, ledger_up: Settings, app: LedgerClient, registry: Registry
) -> None:
    settings = as_gateway(ledger_up, secured)
    limit = 12
    first = gateway_config(registry, rate_per_ip=1000, rate_per_session=limit, rate_window="10m")
    second = gateway_config(registry, rate_per_ip=1000, rate_per_session=limit, rate_window="10m")
    pair = await app.start_session("alice", client_id="svc")
    auth = ("svc", registry.secrets["svc"])
    clock = window_start_clock(600)  # both instances in one window, however slow the machine
    async with (
        gateway(settings, first, clock) as one,
        gateway(settings, second, clock) as two,
        httpx.AsyncClient(timeout=10) as http,
    ):
        assert len((await http.get(f"{one}/.well-known/jwks.json")).json()["keys"]) == 1
        token, statuses = pair.refresh_token, []
        for i in range(limit + 4):  # alternate instances; the session's count is shared
            form = {"grant_type": "refresh_token", "refresh_token": token}
            res = await http.post(f"{(one, two)[i % 2]}/oauth/token", data=form, auth=auth)
            statuses.append(res.status_code)
            if res.status_code == 200:
                token = res.json()["refresh_token"]
            else:
                assert res.status_code == 429 and res.json()["error"] == "rate_limited"
                assert 1 <= int(res.headers["Retry-After"]) <= 600
        assert statuses == [200] * limit + [429] * 4, statuses
        victim = await app.start_session("carol", client_id="svc")
        forged = f"rt1.{victim.sid}.0.{'A' * 43}"  # knows the sid, not the token
        for _ in range(limit + 2):
            form = {"grant_type": "refresh_token", "refresh_token": forged}
            res = await http.post(f"{one}/oauth/token", data=form, auth=auth)
            assert res.status_code == 400 and res.json()["error"] == "invalid_grant"
        form = {"grant_type": "refresh_token", "refresh_token": victim.refresh_token}
        assert (
            await http.post(f"{two}/oauth/token", data=form, auth=auth)
        ).status_code == 200  # not locked out
        other = await app.start_session("bob", client_id="svc")  # another session is not limited
        form = {"grant_type": "refresh_token", "refresh_token": other.refresh_token}
        res = await http.post(f"{two}/oauth/token", data=form, auth=auth)
        assert res.status_code == 200


async def test_the_per_ip_limit_holds_across_instances(
    secured: Secured, ledger_up: Settings, registry: Registry
) -> None:
    settings = as_gateway(ledger_up, secured)
    config, clock = {"rate_per_ip": 10, "rate_window": "10m"}, window_start_clock(600)
    async with (
        gateway(settings, gateway_config(registry, **config), clock) as one,
        gateway(settings, gateway_config(registry, **config), clock) as two,
        httpx.AsyncClient(timeout=10) as http,
    ):
        revoke = {"token": "x", "client_id": "web"}
        guess = {"grant_type": "refresh_token", "refresh_token": "x"}
        calls = [
            http.post(f"{one}/oauth/revoke", data=revoke) if i % 2 else
            http.post(f"{two}/oauth/token", data=guess, auth=("svc", f"guess{i:040d}"))  # brute force
            for i in range(16)
        ]  # fmt: skip
        codes = [r.status_code for r in await asyncio.gather(*calls)]
        assert codes.count(429) == 6 and set(codes) == {200, 401, 429}, codes  # failed logins count too
