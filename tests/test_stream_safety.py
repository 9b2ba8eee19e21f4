"""Invariants 4 and 5: the stream is append-only and holds no secrets."""

from __future__ import annotations

import json
from pathlib import Path

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.embedded import NatsServer
from ledger.store import EventStore
from tests.helpers import all_events

DELETE_DENIED, PURGE_DENIED = 10057, 10110


async def test_stream_refuses_delete_and_purge(
    client: LedgerClient, store: EventStore, settings: Settings
) -> None:
    await client.start_session("alice")
    nc = store.nc
    delete = await nc.request(f"$JS.API.STREAM.MSG.DELETE.{settings.stream}", json.dumps({"seq": 1}).encode())
    assert json.loads(delete.data)["error"]["err_code"] == DELETE_DENIED
    purge = await nc.request(f"$JS.API.STREAM.PURGE.{settings.stream}", b"{}")
    assert json.loads(purge.data)["error"]["err_code"] == PURGE_DENIED
    info = await store.js.stream_info(settings.stream)
    assert info.config.deny_delete and info.config.deny_purge and info.config.allow_direct
    assert info.state.messages == info.state.last_seq  # nothing ever removed


async def test_stream_bytes_hold_no_raw_tokens_or_keys(
    client: LedgerClient, store: EventStore, settings: Settings, nats_server: NatsServer
) -> None:
    issued: list[str] = []
    for i in range(5):
        pair = await client.start_session(f"user{i}", scopes=["read"])
        issued += [pair.access_token, pair.refresh_token]
        newer = await client.rotate(pair.refresh_token)
        issued += [newer.access_token, newer.refresh_token]
        if i % 2:
            await client.logout(newer.refresh_token)
    await client.revoke_user("user0")
    secrets_ = {t.rsplit(".", 1)[-1] for t in issued}  # refresh secrets and JWT signatures
    pem_lines = {
        line.strip()
        for pem in (settings.keys_path).glob("*.pem")
        for line in pem.read_text().splitlines()
        if line and not line.startswith("-----")
    }
    master = (settings.keys_path / "ledger.secret").read_bytes()
    blob = b"".join(p.read_bytes() for p in Path(nats_server.store_dir).rglob("*") if p.is_file())
    assert blob, "the stream's files were found"
    for needle in [*issued, *secrets_, *pem_lines]:
        assert needle.encode() not in blob
    assert master not in blob
    text = "\n".join(r.event.model_dump_json() for r in await all_events(store))
    for needle in issued:
        assert needle not in text
