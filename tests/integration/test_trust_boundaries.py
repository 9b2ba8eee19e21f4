"""Every role only its role (invariant 10), tested as attacks against a real nats-server
running the project's own nats.conf. Each test is named after the finding it closes; each
one fails on the code before the fix.

Roles run with their real credentials: the service and broadcaster as ``ledger``, the
sessions projection as ``projector``, verifiers as ``edge``, attackers as whoever they are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from consumers.broadcast import DURABLE, run_broadcaster
from consumers.edge.sidecar import run_edge
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.subjects import encode_token
from ledger.domain.errors import BadRequest, LedgerError
from ledger.streaming.connection import connect, flush_to_server
from ledger.streaming.embedded import free_port
from ledger.streaming.store import EventStore
from projections.sessions.runner import run_sessions
from tests.support.deploy import Secured, refused_publish, refused_subscribe
from tests.support.edge import claims_for, running, service_key, sign, until_rejected, verifier

ATTACKERS = ("app", "edge", "projector", "analyst")


def as_user(settings: Settings, secured: Secured, user: str, **changes: Any) -> Settings:
    return settings.model_copy(update={"nats_url": secured.url(user), **changes})


@pytest.fixture
async def app(secured: Secured, ledger_up: Settings) -> AsyncIterator[LedgerClient]:
    client = await LedgerClient.connect(secured.url("app"), error_cb=secured.recorder("app"))
    yield client
    await client.close()


@pytest.fixture
async def reader(secured: Secured, ledger_up: Settings) -> AsyncIterator[EventStore]:
    nc = await secured.connect("ledger")
    yield EventStore(nc, ledger_up)
    await nc.close()


async def quiet(nc: NATS) -> None:
    """Whatever a responder would do with what was just sent has had time to happen."""
    await flush_to_server(nc)
    await asyncio.sleep(0.5)


# -- finding 1 (high): reply-subject injection -----------------------------------------------


async def test_finding1_reply_subject_injection_makes_no_responder_write(
    secured: Secured, ledger_up: Settings, app: LedgerClient, reader: EventStore
) -> None:
    async with running(run_sessions, as_user(ledger_up, secured, "projector")):
        victim = await app.start_session("victim", scopes=["read"])
        before = await reader.last_seq()
        targets = [
            f"ledger.ev.s.{victim.sid}.junk",  # the victim's family: it could then never refresh
            f"ledger.ev.u.{encode_token('victim')}.revoked",  # the victim's user cut
            f"ledger.revoked.session.{victim.sid}",
            f"$KV.LEDGER_SESSIONS_1.s.{victim.sid}",  # the projection's record (crash loop)
            "$JS.API.STREAM.DELETE.LEDGER",
            "_INBOX",
            "_INBOX.*",
            "_INBOX.>",
        ]
        bodies = {
            "ledger.cmd.start": {"sub": "mallory"},
            "ledger.cmd.rotate": {"refresh_token": victim.refresh_token},  # a token pair into LEDGER
            "ledger.cmd.revoke_user": {"sub": "victim"},
            "ledger.q.session": {"sid": victim.sid},
        }
        for reply in targets:
            for subject, body in bodies.items():
                await app.nc.publish(subject, json.dumps(body).encode(), reply=reply)
        await quiet(app.nc)
        assert await reader.last_seq() == before  # nothing ran, nothing was written
        rotated = await app.rotate(victim.refresh_token)  # the victim is unaffected
        assert rotated.generation == 1
        deadline = time.monotonic() + 10
        while (await app.get_session(victim.sid)).generation != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert (await app.get_session(victim.sid)).status == "active"


async def test_finding1_narrow_reply_prefixes_keep_answers_in_the_callers_inboxes(
    secured: Secured, tmp_path: Any, services: Any
) -> None:
    """With LEDGER_REPLY_PREFIXES=["_INBOX.app."] an app cannot direct an answer to the edge's inbox."""
    settings = Settings(
        nats_url=secured.url("ledger"), data_dir=tmp_path / "data", reply_prefixes=("_INBOX.app.",)
    )
    await services.start(settings)
    edge = await secured.connect("edge")
    stolen: list[bytes] = []

    async def steal(msg: Any) -> None:
        stolen.append(msg.data)

    await edge.subscribe("_INBOX.edge.>", cb=steal)
    app = await LedgerClient.connect(secured.url("app"))
    try:
        assert (await app.start_session("carol")).generation == 0  # its own inbox works
        await app.nc.publish("ledger.cmd.start", b'{"sub":"mallory"}', reply="_INBOX.edge.steal")
        await quiet(app.nc)
        await quiet(edge)
        assert stolen == []
    finally:
        await app.close()
        await edge.close()


# -- finding 2 (high): the edge could switch revocation off --------------------------------


async def test_finding2_no_role_but_the_ledger_can_delete_drain_or_redefine_the_broadcaster(
    secured: Secured, ledger_up: Settings, app: LedgerClient
) -> None:
    async with running(run_broadcaster, ledger_up), verifier(as_user(ledger_up, secured, "edge")) as edge:
        for user in ATTACKERS:
            nc = await secured.connect(user)
            try:
                for api in ("DELETE", "INFO", "MSG.NEXT", "PAUSE", "DURABLE.CREATE", "CREATE"):
                    if api == "INFO" and user in ("edge", "analyst", "projector"):
                        continue  # reading a consumer's info is harmless and allowed
                    await refused_publish(secured, nc, user, f"$JS.API.CONSUMER.{api}.LEDGER.{DURABLE}")
                await refused_publish(secured, nc, user, f"$JS.API.CONSUMER.CREATE.LEDGER.{DURABLE}.ledger.>")
            finally:
                await nc.close()
        pair = await app.start_session("dave")
        assert edge.verify(pair.access_token).sub == "dave"
        await app.revoke_session(pair.sid)
        _, reason = await until_rejected(edge, pair.access_token, limit=10)
        assert reason == "session_revoked"  # revocation still flows to the edge


async def test_review_no_role_can_redefine_a_consumer_by_naming_it_in_the_request_body(
    secured: Secured, ledger_up: Settings
) -> None:
    """Found in review: ``CONSUMER.CREATE.<stream>`` takes the consumer's name from the body,
    so an edge could rewrite the broadcaster's filter (create-or-update) and switch revocation
    off while the heartbeat went on. Only the named subject is allowed now; it ignores the
    body's name, and the protected names are denied."""
    async with running(run_broadcaster, ledger_up):
        admin = await secured.connect("ledger")
        before = (await admin.jetstream().consumer_info("LEDGER", DURABLE)).config.filter_subjects
        nothing = "ledger.ev.s.nobody.revoked"
        config = {"name": DURABLE, "deliver_policy": "all", "ack_policy": "explicit", "max_ack_pending": 256,
                  "ack_wait": 30_000_000_000, "filter_subject": nothing}  # fmt: skip
        body = json.dumps({"stream_name": "LEDGER", "config": config}).encode()
        for user in ("edge", "analyst", "projector"):
            nc = await secured.connect(user)
            try:
                await refused_publish(secured, nc, user, "$JS.API.CONSUMER.CREATE.LEDGER")
                await nc.publish("$JS.API.CONSUMER.CREATE.LEDGER", body)
                with contextlib.suppress(Exception):  # named: the server uses the subject's name
                    await nc.request(
                        "$JS.API.CONSUMER.CREATE.LEDGER.mine.ledger.ev.s.nobody.revoked", body, timeout=2
                    )
                await flush_to_server(nc)
            finally:
                await nc.close()
        after = await admin.jetstream().consumer_info("LEDGER", DURABLE)
        await admin.close()
        assert after.config.filter_subjects == before and not after.config.filter_subject


async def test_finding2_the_broadcaster_recreates_its_deleted_consumer(
    secured: Secured, ledger_up: Settings, app: LedgerClient
) -> None:
    """Even an operator's mistake (a delete as ``ledger``) does not stop revocations."""
    async with running(run_broadcaster, ledger_up), verifier(as_user(ledger_up, secured, "edge")) as edge:
        admin = await secured.connect("ledger")
        try:
            await admin.jetstream().delete_consumer("LEDGER", DURABLE)
        finally:
            await admin.close()
        pair = await app.start_session("erin")
        await app.revoke_session(pair.sid)
        _, reason = await until_rejected(edge, pair.access_token, limit=15)
        assert reason == "session_revoked"


async def test_finding2_a_silent_broadcaster_makes_edges_fail_closed(
    secured: Secured, ledger_up: Settings, app: LedgerClient
) -> None:
    pair = await app.start_session("frank")
    limit = timedelta(seconds=2)
    async with verifier(as_user(ledger_up, secured, "edge"), max_staleness=limit) as edge:
        async with running(run_broadcaster, ledger_up):
            deadline = time.monotonic() + 10
            while edge.broadcaster_silence() > 0.5:  # its heartbeat arrives
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert edge.verify(pair.access_token).sub == "frank"
        _, reason = await until_rejected(edge, pair.access_token, limit=10)
        assert reason == "stale" and edge.broadcaster_silence() > limit.total_seconds()
        assert edge.health()["serving"] is False and edge.staleness() < 1.5  # NATS itself is fine


# -- finding 3 (high/medium): streams of anyone's choosing --------------------------------


async def test_finding3_no_role_but_the_ledger_creates_or_changes_a_stream(
    secured: Secured, ledger_up: Settings
) -> None:
    names = ("CAPTURE", "LEDGER_RECEIPTS", "KV_LEDGER_SESSIONS_1", "KV_LEDGER_NEW", "LEDGER_REVOCATIONS")
    for user in ATTACKERS:
        nc = await secured.connect(user)
        try:
            for name in names:
                for api in ("CREATE", "UPDATE", "DELETE"):
                    await refused_publish(secured, nc, user, f"$JS.API.STREAM.{api}.{name}")
        finally:
            await nc.close()
    projector = await secured.connect("projector")
    try:  # what a projector may do to its buckets: use and empty them
        await projector.jetstream().purge_stream("KV_LEDGER_SESSIONS_2")
    finally:
        await projector.close()


# -- key acknowledgements: only the ledger asks, only edges answer, and only what they were asked


async def test_no_role_but_the_ledger_pings_verifiers_and_only_edges_hear_the_ping(
    secured: Secured, ledger_up: Settings
) -> None:
    """A fake acknowledgement could only hurry a key's activation (never trust a key), yet
    nobody but an edge may hear the ping, and an edge may answer nothing it was not asked."""
    ping = "ledger.verifiers.ping"
    for user in ATTACKERS:
        nc = await secured.connect(user)
        try:
            await refused_publish(secured, nc, user, ping)
            if user != "edge":
                await refused_subscribe(secured, nc, user, ping)
            else:  # answering is allowed; writing into the ledger's inboxes unasked is not
                await refused_publish(secured, nc, user, "_INBOX.ledger.forged-ack")
        finally:
            await nc.close()
    async with verifier(as_user(ledger_up, secured, "edge"), verifier_id="edge-real") as edge:
        ledger = await secured.connect("ledger")
        try:
            answer = await ledger.request(ping, b"", timeout=5)
        finally:
            await ledger.close()
        assert json.loads(answer.data) == {"verifier": "edge-real", "kids": sorted(edge.keys.keys),
                                           "keys_seq": edge._seq["keys"]}  # fmt: skip


# -- finding 6 (medium) and 7 (low): hostile input at the sidecar and the client ------------


@pytest.fixture
async def sidecar(settings: Settings, client: LedgerClient) -> AsyncIterator[tuple[str, Settings]]:
    edge_settings = settings.model_copy(update={"edge_listen": f"127.0.0.1:{free_port()}"})
    async with running(run_broadcaster, settings), running(run_edge, edge_settings):
        yield f"http://{edge_settings.edge_listen}", edge_settings


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def test_finding6_and_7_hostile_tokens_get_one_401_and_the_sidecar_stays_healthy(
    sidecar: tuple[str, Settings], client: LedgerClient
) -> None:
    base, settings = sidecar
    key = service_key(settings)
    pair = await client.start_session("grace")
    deep = "[" * 1500 + "]" * 1500  # ~3 kB of nesting: json.loads would recurse past Python's limit
    nested = f'{{"alg": "ES256", "kid": "{key.kid}", "typ": "at+jwt", "x": {deep}}}'.encode()
    head, body = pair.access_token.split(".")[:2]
    overflow = b64(b'{"iat": -1e400}')
    hostile = {
        "nested header": f"{b64(nested)}.{body}.AAAA",
        "exp 10**400": sign(key, claims_for(settings, exp=10**400)),
        "iat -1e400": f"{head}.{overflow}.AAAA",
        "huge header": "A" * 100_000 + ".e30.AAAA",
    }
    async with aiohttp.ClientSession() as http:
        for name, token in hostile.items():
            async with http.get(f"{base}/auth", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status in (400, 401, 431), (name, resp.status)
        async with http.get(f"{base}/auth", headers={"Authorization": f"Bearer {pair.access_token}"}) as resp:
            assert resp.status == 200
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200


@pytest.mark.parametrize("sub", ["a\u0080b", "a\u009bb", "a\u200bb", "evil\u202eadmin", "\ufeffroot", "a\tb"])
async def test_finding7_user_ids_with_controls_or_invisible_characters_are_refused(
    client: LedgerClient, store: EventStore, sub: str
) -> None:
    before = await store.last_seq()
    with pytest.raises(BadRequest):
        await client.start_session(sub)
    with pytest.raises(BadRequest):  # past the client's own check: the server refuses it too
        await client.request_raw("start", json.dumps({"sub": sub}).encode())
    assert await store.last_seq() == before


async def test_finding7_an_answer_that_is_not_a_ledger_reply_is_a_ledger_error(settings: Settings) -> None:
    nc = await connect(settings.nats_url, "impostor")
    try:

        async def answer_junk(msg: Any) -> None:
            await msg.respond(b'{"ok": true, "result": {"what": "ever"}}' if b"ok" in msg.data else b"<html>")

        await nc.subscribe("fake.cmd.*", cb=answer_junk)
        await flush_to_server(nc)
        async with await LedgerClient.connect(settings.nats_url, prefix="fake") as impostor:
            with pytest.raises(LedgerError):
                await impostor.start_session("x")
            with pytest.raises(LedgerError):
                await impostor.request_raw("start", b"{}")
    finally:
        await nc.close()


# -- defence in depth: a message on an event subject that is not an event ---------------------


async def test_junk_on_an_event_subject_bricks_no_family_projection_or_tail(
    settings: Settings, client: LedgerClient, store: EventStore
) -> None:
    """Only a writer with the ledger's permissions can put it there; even then it is skipped."""
    pair = await client.start_session("heidi")
    nc = await connect(settings.nats_url, "junk-writer")
    try:
        await nc.jetstream().publish(f"ledger.ev.s.{pair.sid}.junk", b'{"access_token": "x"}')
        await nc.jetstream().publish(f"ledger.ev.u.{encode_token('heidi')}.revoked", b"not json")
    finally:
        await nc.close()
    async with running(run_sessions, settings):
        rotated = await client.rotate(pair.refresh_token)  # the family still works
        assert rotated.generation == 1
        assert (await client.revoke_session(pair.sid)).seq is not None
        last = await store.last_seq()
        deadline = time.monotonic() + 10
        while (await client.get_session(pair.sid)).head_seq != last:  # the projection went past it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    events = [rec async for rec in store.read(from_seq=1)]  # the tail skips it
    assert [type(r.event).__name__ for r in events][-3:] == [
        "SessionStarted",
        "TokenRotated",
        "SessionRevoked",
    ]
