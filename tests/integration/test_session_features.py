"""Issue 14 against a real nats-server: devices and last-seen in the sessions projection,
"sign out all other devices" at every edge, the session cap racing over two service
instances, idempotent start, acr through rotations and at the sidecar, and privacy of the
client IP in the stream, the KV bucket and DuckDB."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from consumers.edge.sidecar import run_edge
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import ClientContext, TokenPair
from ledger.contracts.queries import SessionList
from ledger.domain.errors import SessionLimitReached, SessionRevokedError, Unavailable
from ledger.domain.events import TokenRotated
from ledger.streaming.connection import connect
from ledger.streaming.embedded import free_port
from ledger.streaming.store import EventStore
from projections.analytics.projection import AnalyticsDB, AnalyticsProjection
from projections.sessions.runner import RunnerOptions, run_sessions
from projections.sessions.store import SessionStore, live_bucket
from tests.support.edge import broadcaster, reason_of, report, running, until_rejected, verifier

FAST = RunnerOptions(batch=64, ack_wait=1.0, fetch_timeout=0.2, pointer_check=0.2, restart_delay=0.2)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile/15E148 Safari/604.1"  # noqa: E501
IPAD = "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile/15E148 Safari/604.1"  # noqa: E501


@contextlib.asynccontextmanager
async def projection(settings: Settings) -> AsyncIterator[None]:
    async with running(lambda s, stop, ready: run_sessions(s, stop, ready, options=FAST), settings):
        yield


async def poll(check: Callable[[], Any], *, limit: float = 20.0) -> Any:
    """Call ``check`` until it returns something truthy (generous deadline, no timing assert);
    ``Unavailable`` (the projection's queries not subscribed yet on a busy machine) is "not yet"."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(Unavailable):
            if result := await check():
                return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {limit}s")


async def last_rotation_at(store: EventStore, sid: str) -> Any:
    rec = await store.last(store.subjects.family_event(sid, "rotated"))
    assert rec is not None and isinstance(rec.event, TokenRotated)
    return rec.event.occurred_at


async def test_three_devices_listed_then_sign_out_the_others_at_every_edge(
    client: LedgerClient, settings: Settings, store: EventStore, capsys: Any
) -> None:
    devices = {
        "laptop": ClientContext(user_agent=FIREFOX, ip="203.0.113.7", label="Work laptop"),
        "phone": ClientContext(user_agent=IPHONE, ip="198.51.100.20", label="My phone"),
        "tablet": ClientContext(user_agent=IPAD, ip="192.0.2.99", label="Tablet"),
    }
    pairs = {
        name: await client.start_session("carol", client_id="web", client=ctx)
        for name, ctx in devices.items()
    }
    pairs["laptop"] = await client.rotate(pairs["laptop"].refresh_token)
    for _ in range(2):
        pairs["phone"] = await client.rotate(pairs["phone"].refresh_token, client=devices["phone"])
    phone = pairs["phone"]

    async with projection(settings):

        async def listed() -> SessionList | None:
            got = await client.list_sessions("carol", current_sid=phone.sid)
            done = {v.sid: v.generation for v in got.sessions} == {
                p.sid: p.generation for p in pairs.values()
            }
            return got if done else None

        views = {v.sid: v for v in (await poll(listed)).sessions}
        labels = {name: views[p.sid].device for name, p in pairs.items()}
        assert {n: (d.label, d.device_class, d.ua_family) for n, d in labels.items() if d} == {
            "laptop": ("Work laptop", "desktop", "Firefox on Linux"),
            "phone": ("My phone", "mobile", "Safari on iOS"),
            "tablet": ("Tablet", "tablet", "Safari on iPadOS"),
        }
        assert views[phone.sid].device.ip_hint == "198.51.100.0/24"  # type: ignore[union-attr]
        assert [v.current for v in views.values()].count(True) == 1 and views[phone.sid].current
        for name in ("laptop", "phone"):  # last seen = the last rotation, as the event says
            assert views[pairs[name].sid].last_seen_at == await last_rotation_at(store, pairs[name].sid)
        assert views[pairs["tablet"].sid].last_seen_at == views[pairs["tablet"].sid].started_at

        async with (
            broadcaster(settings),
            verifier(settings, verifier_id="edge-a") as a,
            verifier(settings, verifier_id="edge-b") as b,
        ):
            for v in (a, b):
                assert all(v.verify(p.access_token).sid == p.sid for p in pairs.values())
            t0 = time.monotonic()
            ack = await client.sign_out_others(sub="carol", current_sid=phone.sid)
            assert ack.kept_sid == phone.sid
            for v in (a, b):
                for name in ("laptop", "tablet"):
                    _, reason = await until_rejected(v, pairs[name].access_token)
                    assert reason == "user_revoked"
                assert reason_of(v, phone.access_token) is None
            report(capsys, f"sign out others -> rejected at 2 edges {1000 * (time.monotonic() - t0):.1f} ms")
            newer = await client.rotate(phone.refresh_token)  # the current device keeps rotating
            assert all(reason_of(v, newer.access_token) is None for v in (a, b))
            for name in ("laptop", "tablet"):
                with pytest.raises(SessionRevokedError):
                    await client.rotate(pairs[name].refresh_token)

        async def only_phone() -> bool:
            got = await client.list_sessions("carol", current_sid=phone.sid)
            return [v.sid for v in got.sessions] == [phone.sid]

        await poll(only_phone)


@pytest.mark.parametrize("policy", ["evict_oldest", "refuse"])
async def test_session_cap_race_over_two_instances_leaves_exactly_the_cap(
    settings_for: Any, services: Any, policy: str
) -> None:
    settings = settings_for(max_sessions_per_user=5, session_limit_policy=policy)
    await services.start(settings)
    await services.start(settings)  # two instances in the queue group: the race is real
    async with await LedgerClient.connect(settings.nats_url, timeout=30) as client:
        results = await asyncio.gather(
            *(client.start_session("dave", client_id="web") for _ in range(20)), return_exceptions=True
        )
        pairs = [r for r in results if isinstance(r, TokenPair)]
        refused = [r for r in results if not isinstance(r, TokenPair)]
        alive = 0
        for pair in pairs:  # a session is alive iff the ledger still rotates it
            try:
                await client.rotate(pair.refresh_token)
                alive += 1
            except SessionRevokedError:
                pass
    assert alive == 5
    if policy == "refuse":
        assert (
            len(pairs) == 5
            and all(isinstance(r, SessionLimitReached) for r in refused)
            and len(refused) == 15
        )
    else:
        assert len(pairs) == 20 and not refused


async def test_idempotent_start_on_a_real_server(client: LedgerClient) -> None:
    answers = await asyncio.gather(
        *(client.start_session("erin", idempotency_key="req-000001") for _ in range(10))
    )
    assert len({a.sid for a in answers}) == 1 and len({a.refresh_token for a in answers}) == 1
    other = await client.start_session("erin", idempotency_key="req-000002")
    assert other.sid != answers[0].sid


async def test_acr_survives_rotations_step_up_raises_it_and_the_sidecar_tells_upstream(
    client: LedgerClient, settings_for: Any
) -> None:
    port = free_port()
    settings = settings_for(edge_listen=f"127.0.0.1:{port}")
    pair = await client.start_session("frank", acr="aal1", amr=["pwd"])
    first = pair
    async with broadcaster(settings), verifier(settings, verifier_id="edge-acr") as v:
        for _ in range(100):
            pair = await client.rotate(pair.refresh_token)
            claims = v.verify(pair.access_token)
            assert (claims.acr, claims.amr, claims.auth_time) == ("aal1", ("pwd",), None)
        ack = await client.step_up(pair.sid, sub="frank", acr="aal2", amr=["pwd", "hwk"])
        assert ack.acr == "aal2"
        assert v.verify(pair.access_token).acr == "aal1"  # tokens issued before keep their level
        stepped = await client.rotate(pair.refresh_token)
        assert v.verify(stepped.access_token).acr == "aal2"
        assert v.verify(first.access_token).acr == "aal1"
    async with broadcaster(settings), running(run_edge, settings), aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {stepped.access_token}"}
        async with http.get(f"http://127.0.0.1:{port}/auth", headers=headers) as resp:
            assert resp.status == 200
            assert (resp.headers["X-Auth-Acr"], resp.headers["X-Auth-Amr"]) == ("aal2", "pwd hwk")
        plain = await client.start_session("frank")  # no context: the headers are still sent, empty,
        forged = {"Authorization": f"Bearer {plain.access_token}", "X-Auth-Acr": "aal3"}  # so a proxy
        async with http.get(f"http://127.0.0.1:{port}/auth", headers=forged) as resp:  # replaces a client's
            assert resp.status == 200
            assert (resp.headers["X-Auth-Acr"], resp.headers["X-Auth-Amr"], resp.headers["X-Auth-Time"]) == (
                "",
                "",
                "",
            )


IP = "203.0.113.77"


async def raw_stream(nc: NATS, settings: Settings) -> bytes:
    js = nc.jetstream()
    sub = await js.subscribe(">", stream=settings.stream, ordered_consumer=True)
    chunks = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                return b"".join(chunks)
            chunks.append(msg.data)
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("mode", ["truncate", "hash", "raw"])
async def test_no_raw_ip_in_events_kv_or_duckdb_unless_enabled(
    settings_for: Any, services: Any, tmp_path: Path, mode: str
) -> None:
    settings = settings_for(client_ip=mode)
    await services.start(settings)
    ctx = ClientContext(user_agent=FIREFOX, ip=IP, label="laptop")
    async with await LedgerClient.connect(settings.nats_url) as client:
        pair = await client.start_session("gina", client=ctx)
        await client.rotate(pair.refresh_token, client=ctx)
        async with projection(settings):
            await poll(lambda: _listed_with_device(client, "gina"))
    nc = await connect(settings.nats_url, "test-privacy")
    try:
        stream = await raw_stream(nc, settings)
        js = nc.jetstream()
        bucket = await (await SessionStore.open(js, await live_bucket(js, settings))).dump()
    finally:
        await nc.drain()
    db = AnalyticsDB(tmp_path / "a.duckdb")
    try:
        await AnalyticsProjection(settings, db).catch_up()
        rows = str(db.conn.execute("SELECT * FROM events").fetchall())
    finally:
        db.close()
    kv = b"".join(bucket.values())
    found = {"stream": IP.encode() in stream, "kv": IP.encode() in kv, "duckdb": IP in rows}
    assert b"Gecko" not in stream + kv and "Gecko" not in rows  # the raw user agent never
    assert found == dict.fromkeys(found, mode == "raw")


async def _listed_with_device(client: LedgerClient, sub: str) -> bool:
    got = await client.list_sessions(sub)
    return bool(got.sessions) and got.sessions[0].rotations == 1


async def test_readme_session_features_example_and_analyst_queries(
    settings_for: Any, services: Any, tmp_path: Path
) -> None:
    """The README's session-features example runs as written, and its DuckDB queries report
    sessions per device class and evictions by the cap."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "async def features" in b
    )
    settings = settings_for(max_sessions_per_user=2)
    await services.start(settings)
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    async with await LedgerClient.connect(settings.nats_url) as client, projection(settings):
        await poll(lambda: _answers(client))
        await namespace["features"](client)  # leaves the laptop session alone
        for _ in range(2):  # the second of these makes the cap of 2 evict the laptop session
            await client.start_session("alice")
    db = AnalyticsDB(tmp_path / "a.duckdb")
    try:
        await AnalyticsProjection(settings, db).catch_up()
        queries = re.findall(r"`(SELECT [^`]+)`", readme[readme.index("**Analytics.** The events") :])
        per_class = dict(db.conn.execute(queries[0]).fetchall())  # type: ignore[arg-type]
        evictions = db.conn.execute(queries[1]).fetchone()
    finally:
        db.close()
    assert per_class == {"desktop": 1, "mobile": 1, None: 2}
    assert evictions == (1,)


async def _answers(client: LedgerClient) -> bool:
    await client.list_sessions("nobody")
    return True
