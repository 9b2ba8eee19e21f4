"""Key care against a real server: a new key signs once every live verifier has it (or at its
deadline), superseded keys retire by themselves, scheduled rotation adds exactly one key with
several service instances, and a root key leaves nothing to trust on first use."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.receipts import KeyAck
from ledger.contracts.subjects import Subjects
from ledger.domain.events import SigningKeyActivated, SigningKeyAdded, SigningKeyRetired
from ledger.domain.ids import new_event_id
from ledger.service.keyops import follow, jwks, rotate_key
from ledger.service.keys import ROOT_PUBLIC, create_root_key, generate, key_id, public_jwk
from ledger.streaming.connection import connect
from ledger.streaming.store import EventStore
from ledger.streaming.streams import ensure_streams
from tests.support.edge import broadcaster, kid_of, report, verifier
from tests.support.helpers import all_events
from tests.support.services import ServiceRunner


async def signing_kid(client: LedgerClient) -> str:
    return kid_of((await client.start_session("kai")).access_token)


async def until(check: Any, limit: float = 30.0) -> float:
    """Poll an async predicate; seconds it took (fails after ``limit``)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < limit, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def key_events(store: EventStore) -> list[Any]:
    kinds = SigningKeyAdded | SigningKeyActivated | SigningKeyRetired
    return [rec.event for rec in await all_events(store) if isinstance(rec.event, kinds)]


async def test_a_new_key_signs_once_every_live_verifier_acknowledged_it(
    client: LedgerClient, settings: Settings, store: EventStore, nc: NATS, capsys: Any
) -> None:
    old = await signing_kid(client)
    async with (
        broadcaster(settings),
        verifier(settings) as a,
        verifier(settings) as b,
        verifier(settings) as c,
    ):
        t0 = time.monotonic()
        new = await rotate_key(nc, settings, now=datetime.now(UTC), activate_in=timedelta(minutes=10))

        async def new_key_signs() -> bool:
            return await signing_kid(client) == new.kid

        elapsed = await until(new_key_signs)
        for edge in (a, b, c):  # every one had it before anything was signed with it
            assert new.kid in edge.keys.keys
        token = (await client.start_session("kai")).access_token
        assert all(edge.verify(token).sub == "kai" for edge in (a, b, c))
    acks = [e for e in await key_events(store) if isinstance(e, SigningKeyActivated)]
    assert [(e.kid, e.verifiers) for e in acks] == [(new.kid, 3)]
    assert old != new.kid and elapsed < 60  # the 10-minute deadline was not what activated it
    report(capsys, f"[keys] rotate -> new key signing with 3 live verifiers: {time.monotonic() - t0:.2f} s")


async def test_a_verifier_without_the_key_holds_it_back_until_its_deadline(
    client: LedgerClient, settings: Settings, store: EventStore, nc: NATS
) -> None:
    """A live verifier that has not got the key (here: one that never will) keeps it from
    signing; the deadline (the verifiers' maximum staleness by default) still bounds the wait."""

    async def lagging(msg: Msg) -> None:
        await msg.respond(KeyAck(verifier="lagging-edge", kids=[], keys_seq=0).encode())

    await nc.subscribe(Subjects(settings.subject_prefix).verifiers_ping, cb=lagging)
    old = await signing_kid(client)
    new = await rotate_key(nc, settings, now=datetime.now(UTC), activate_in=timedelta(seconds=4))
    assert new.activates_at is not None
    while datetime.now(UTC) < new.activates_at - timedelta(seconds=0.5):
        assert await signing_kid(client) == old  # held back while the verifier lacks it
        await asyncio.sleep(0.2)

    async def new_key_signs() -> bool:
        return await signing_kid(client) == new.kid

    await until(new_key_signs)
    assert not [e for e in await key_events(store) if isinstance(e, SigningKeyActivated)]


async def test_scheduled_rotation_with_two_instances_adds_one_key_at_a_time_and_retires_the_old(
    services: ServiceRunner, settings_for: Any, capsys: Any
) -> None:
    settings: Settings = settings_for(
        access_ttl=timedelta(seconds=2), edge_max_staleness=timedelta(seconds=1),
        key_rotation=timedelta(seconds=4), key_maintenance_interval=timedelta(seconds=0.1),
    )  # fmt: skip
    await services.start(settings)
    await services.start(settings)  # a second instance racing for every step
    client = await LedgerClient.connect(settings.nats_url)
    nc = await connect(settings.nats_url, "test-key-care")
    store = EventStore(nc, settings)
    checked, kids = 0, set()
    try:
        async with broadcaster(settings), verifier(settings, max_staleness=timedelta(seconds=30)) as edge:
            genesis = kid_of((await client.start_session("kai")).access_token)

            async def genesis_retired() -> bool:
                nonlocal checked
                pair = await client.start_session("kai")  # load across every switch
                assert edge.verify(pair.access_token).sub == "kai"  # never an unknown key
                checked += 1
                kids.add(kid_of(pair.access_token))
                retired = [e for e in await key_events(store) if isinstance(e, SigningKeyRetired)]
                return any(e.kid == genesis for e in retired)

            await until(genesis_retired, limit=60)
        events = await key_events(store)
    finally:
        await client.close()
        await nc.drain()
    added = [e for e in events if isinstance(e, SigningKeyAdded)]
    gaps = [(b.occurred_at - a.occurred_at).total_seconds() for a, b in itertools.pairwise(added)]
    assert len(added) >= 2 and min(gaps) >= 3.5, gaps  # never two keys for one rotation
    retired = [e for e in events if isinstance(e, SigningKeyRetired)]
    assert [e.kid for e in retired].count(genesis) == 1 and retired[0].reason == "expired"
    assert len(kids) >= 2 and checked > 10
    report(capsys, f"[keys] scheduled: {len(added)} keys, {checked} tokens verified across the switches")


async def test_with_a_root_key_a_forged_first_key_is_ignored_and_the_ledgers_own_is_trusted(
    services: ServiceRunner, settings_for: Any, store: EventStore
) -> None:
    probe: Settings = settings_for()
    create_root_key(probe.keys_path, "ES256", None)
    settings: Settings = settings_for(root_key=probe.keys_path / ROOT_PUBLIC)
    private = generate("ES256")  # a key written into the stream before the ledger's first start
    kid = key_id(private.public_key())
    forged = SigningKeyAdded(event_id=new_event_id(), occurred_at=datetime.now(UTC), kid=kid, alg="ES256",
                             public_jwk=public_jwk(private.public_key(), kid, "ES256"))  # fmt: skip
    await ensure_streams(store.nc, settings)
    await store.append(store.subjects.key(kid, "added"), forged)
    await services.start(settings)
    client = await LedgerClient.connect(settings.nats_url)
    try:
        token = (await client.start_session("rue")).access_token
        assert kid_of(token) != kid
        forged_token = jwt.encode({"sub": "admin"}, private, algorithm="ES256", headers={"kid": kid})
        async with broadcaster(settings), verifier(settings) as edge:
            assert edge.verify(token).sub == "rue"
            with pytest.raises(Exception, match="unknown"):
                edge.verify(forged_token)
        async with verifier(settings.model_copy(update={"root_key": None})) as unrooted:
            assert kid in unrooted.keys.keys  # without the root, the forgery was first: trusted
    finally:
        await client.close()


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
async def test_the_jwks_verifies_tokens_in_an_independent_jose_library(
    services: ServiceRunner, settings_for: Any, alg: str
) -> None:
    """RFC 7517 members only, right types (RS256 once published key_ops as a string); the
    rotated key was written encrypted and the service signs with it."""
    settings: Settings = settings_for(algorithm=alg, key_passphrase="at rest")  # encrypted keys, end to end
    await services.start(settings)
    client = await LedgerClient.connect(settings.nats_url)
    nc = await connect(settings.nats_url, "test-jwks")
    try:
        before = (await client.start_session("ivy")).access_token
        await rotate_key(nc, settings, now=datetime.now(UTC), activate_in=timedelta(0))
        after = (await client.start_session("ivy")).access_token
        key_set = jwks((await follow(nc, settings)).book)
    finally:
        await client.close()
        await nc.drain()
    assert kid_of(before) != kid_of(after)
    assert b"ENCRYPTED" in (settings.keys_path / f"{kid_of(after)}.pem").read_bytes()
    for jwk in key_set["keys"]:
        assert jwk["use"] == "sig" and jwk["alg"] == alg and "key_ops" not in jwk and "d" not in jwk
    keys = KeySet.import_key_set(key_set)  # type: ignore[arg-type]
    for token in (before, after):
        assert jose_jwt.decode(token, keys, algorithms=[alg]).claims["sub"] == "ivy"
