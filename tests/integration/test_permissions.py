"""The project's own ``nats.conf``, loaded by a real nats-server: every boundary, both ways.

Each refusal is observed as the server's ``Permissions Violation`` (nats-py error callback);
each allowed path is shown working end to end.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import DeliverPolicy

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import Unavailable
from ledger.domain.events import SigningKeyAdded, decode_event
from ledger.streaming.connection import connect, flush_to_server
from ledger.streaming.consumer import ordered_config
from ledger.streaming.embedded import free_port
from ledger.streaming.store import EventStore
from tests.support.deploy import (
    ConfServer,
    Secured,
    documented_tls_block,
    refused_publish,
    refused_subscribe,
    set_passwords,
    write_test_certificates,
)


async def test_wrong_password_and_no_password_are_refused(secured: Secured) -> None:
    for url in (
        f"nats://app:wrong@127.0.0.1:{secured.server.port}",
        f"nats://127.0.0.1:{secured.server.port}",
    ):
        with pytest.raises(Exception, match="cannot connect"):
            await connect(url, "intruder", deadline=1.5, max_reconnect_attempts=0)


async def test_edge_reads_keys_and_notices_but_cannot_append_or_command(
    secured: Secured, ledger_up: Settings
) -> None:
    nc = await secured.connect("edge")
    try:
        for subject in (
            "ledger.ev.s.AAAAAAAAAAAAAAAAAAAAAA.started",
            "ledger.ev.k.k1.added",
            "ledger.cmd.rotate",
            "ledger.revoked.session.AAAAAAAAAAAAAAAAAAAAAA",  # no forged notices either
            "$JS.API.STREAM.UPDATE.LEDGER",
            "$JS.API.STREAM.CREATE.LEDGER_REVOCATIONS",
        ):
            await refused_publish(secured, nc, "edge", subject)
        await refused_subscribe(secured, nc, "edge", "ledger.cmd.*")
        await refused_subscribe(secured, nc, "edge", "_INBOX.>")
        # Allowed: the signing key by direct get, live notices, receipts.
        msg = await nc.request("$JS.API.DIRECT.GET.LEDGER.ledger.ev.k.*.added", b"", timeout=5)
        assert isinstance(decode_event(msg.data), SigningKeyAdded)
        await nc.subscribe("ledger.revoked.>")
        await nc.publish("ledger.receipt.edge-1", b"{}")
        await flush_to_server(nc)
        assert not secured.errors["edge"], secured.errors["edge"]
    finally:
        await nc.close()


async def test_edge_follows_key_events_like_the_verifier(secured: Secured, ledger_up: Settings) -> None:
    """An ordered consumer on ledger.ev.k.> (what EdgeVerifier uses) reads the key event."""
    nc = await secured.connect("edge")
    try:
        js = nc.jetstream()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_key(msg: Any) -> None:
            await got.put(msg.data)

        config = ordered_config(deliver_policy=DeliverPolicy.ALL)  # named: the only kind an edge may create
        sub = await js.subscribe(
            "ledger.ev.k.>", stream="LEDGER", cb=on_key, ordered_consumer=True, config=config
        )
        assert isinstance(decode_event(await asyncio.wait_for(got.get(), 5)), SigningKeyAdded)
        await sub.unsubscribe()
        assert not secured.errors["edge"], secured.errors["edge"]
    finally:
        await nc.close()


async def test_app_sends_commands_reads_only_its_answers(secured: Secured, ledger_up: Settings) -> None:
    app = await LedgerClient.connect(secured.url("app"), error_cb=secured.recorder("app"))
    try:
        pair = await app.start_session("alice", scopes=["read"])
        rotated = await app.rotate(pair.refresh_token)
        assert rotated.generation == 1 and rotated.sid == pair.sid
        assert (await app.rotate(pair.refresh_token)).refresh_token == rotated.refresh_token  # retry
        assert (await app.revoke_session(pair.sid)).seq is not None
        nc = app.nc
        for subject in ("ledger.ev.s.AAAAAAAAAAAAAAAAAAAAAA.revoked", "$JS.API.STREAM.DELETE.LEDGER"):
            await refused_publish(secured, nc, "app", subject)
        await refused_publish(secured, nc, "app", "$JS.API.DIRECT.GET.LEDGER.ledger.ev.>")
        for subject in ("_INBOX.>", "_INBOX.edge.>", "_INBOX.ledger.>", "ledger.cmd.*", "ledger.ev.>"):
            await refused_subscribe(secured, nc, "app", subject)
    finally:
        await app.close()


async def test_app_cannot_read_another_apps_answers(secured: Secured, ledger_up: Settings) -> None:
    """Two app connections: each one's inbox is private (the prefix is per user, and a
    second app user would get its own prefix); an analyst cannot sniff either."""
    analyst = await secured.connect("analyst")
    try:
        await refused_subscribe(secured, analyst, "analyst", "_INBOX.app.>")
        await refused_subscribe(secured, analyst, "analyst", "ledger.cmd.>")
        await refused_publish(secured, analyst, "analyst", "ledger.cmd.start")
    finally:
        await analyst.close()


async def test_service_user_cannot_delete_purge_or_eavesdrop(secured: Secured, ledger_up: Settings) -> None:
    nc = await secured.connect("ledger")
    try:
        for subject in (
            "$JS.API.STREAM.DELETE.LEDGER",
            "$JS.API.STREAM.PURGE.LEDGER",
            "$JS.API.STREAM.MSG.DELETE.LEDGER",
            "ledger.receipt.forged",
        ):
            await refused_publish(secured, nc, "ledger", subject)
        await refused_subscribe(secured, nc, "ledger", "ledger.cmd.*")  # only in its queue group
        await refused_subscribe(secured, nc, "ledger", "ledger.cmd.*", queue="other")
        await refused_subscribe(secured, nc, "ledger", "_INBOX.app.>")
    finally:
        await nc.close()


async def test_service_user_hears_revoke_alls_only(secured: Secured, ledger_up: Settings) -> None:
    """The service's one event subscription (it forgets rotation hints of a revoked user)."""
    nc = await secured.connect("ledger")
    app = await LedgerClient.connect(secured.url("app"), error_cb=secured.recorder("app"))
    heard: asyncio.Queue[str] = asyncio.Queue()

    async def hear(msg: Any) -> None:
        await heard.put(msg.subject)

    try:
        await nc.subscribe("ledger.ev.u.*.revoked", cb=hear)
        await flush_to_server(nc)
        await app.revoke_user("zoe")
        subject = await asyncio.wait_for(heard.get(), 30)
        assert subject.startswith("ledger.ev.u.") and subject.endswith(".revoked")
        await refused_subscribe(secured, nc, "ledger", "ledger.ev.s.*.rotated")
        await refused_subscribe(secured, app.nc, "app", "ledger.ev.u.*.revoked")
    finally:
        await app.close()
        await nc.close()


async def test_projector_and_analyst_consume_events_read_only(secured: Secured, ledger_up: Settings) -> None:
    """The projector reads through its own named durable, the analyst through an ordered
    (ephemeral) consumer; neither may append, command, notify or change a stream."""
    app = await LedgerClient.connect(secured.url("app"))
    try:
        await app.start_session("bob")
    finally:
        await app.close()
    for user in ("projector", "analyst"):
        nc = await secured.connect(user)
        try:
            js = nc.jetstream()
            if user == "projector":
                psub = await js.pull_subscribe("ledger.ev.>", durable="analytics", stream="LEDGER")
                msgs = await psub.fetch(2, timeout=5)
                for m in msgs:
                    await m.ack()
                types = {json.loads(m.data)["type"] for m in msgs}
            else:
                got: asyncio.Queue[bytes] = asyncio.Queue()

                async def collect(msg: Any, queue: asyncio.Queue[bytes] = got) -> None:
                    await queue.put(msg.data)

                await js.subscribe(
                    "ledger.ev.s.>",
                    stream="LEDGER",
                    cb=collect,
                    ordered_consumer=True,
                    config=ordered_config(),
                )
                types = {json.loads(await asyncio.wait_for(got.get(), 5))["type"]}
            assert types >= {"SessionStarted"}
            for subject in (
                "ledger.ev.s.AAAAAAAAAAAAAAAAAAAAAA.started",
                "ledger.cmd.revoke_user",
                "ledger.revoked.user._YWxpY2U",
                "$JS.API.STREAM.UPDATE.LEDGER",
                "$JS.API.STREAM.DELETE.LEDGER",
                "$JS.API.STREAM.CREATE.LEDGER_REVOCATIONS",
            ):
                await refused_publish(secured, nc, user, subject)
        finally:
            await nc.close()


async def test_projector_keeps_its_buckets_and_answers_queries(secured: Secured, ledger_up: Settings) -> None:
    nc = await secured.connect("projector")
    try:
        await EventStore(nc, ledger_up).ensure_stream()  # unchanged config: info only, no update
        kv = await nc.jetstream().key_value("LEDGER_SESSIONS_1")  # the ledger created it
        await kv.put("sid", b"state")
        assert (await kv.get("sid")).value == b"state"
        await nc.jetstream().purge_stream("KV_LEDGER_SESSIONS_1")  # emptied for a rebuild
        await nc.subscribe("ledger.q.sessions", queue="ledger-queries")
        await flush_to_server(nc)
        assert not secured.errors["projector"], secured.errors["projector"]
        await refused_subscribe(secured, nc, "projector", "ledger.q.*")  # only in its queue group
        await refused_subscribe(secured, nc, "projector", "ledger.cmd.*", queue="ledger-service")
    finally:
        await nc.close()


async def test_documented_tls_block_serves_the_ledger_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, services: Any
) -> None:
    """nats.conf's TLS block, uncommented, with throwaway certificates: tls:// works end to
    end (the CA reaches Python's default context through SSL_CERT_FILE); an unknown CA is refused."""
    pw = set_passwords(monkeypatch)
    write_test_certificates(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "tls" / "ca.pem"))
    server = ConfServer(
        store_dir=tmp_path / "js", port=free_port(), extra_config=documented_tls_block(tmp_path / "tls")
    )
    server.start()
    try:
        await services.start(
            Settings(
                nats_url=f"tls://ledger:{pw['ledger']}@127.0.0.1:{server.port}", data_dir=tmp_path / "data"
            )
        )
        app = await LedgerClient.connect(f"tls://app:{pw['app']}@127.0.0.1:{server.port}")
        try:
            pair = await app.start_session("erin")
            assert (await app.rotate(pair.refresh_token)).generation == 1
        finally:
            await app.close()
        monkeypatch.delenv("SSL_CERT_FILE")  # a client that does not trust this CA is refused
        with pytest.raises(Unavailable):
            await connect(f"tls://app:{pw['app']}@127.0.0.1:{server.port}", "untrusting", deadline=3)
    finally:
        await services.stop_all()
        server.stop()
