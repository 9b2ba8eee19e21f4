"""Invariants 4 and 5: the stream is append-only and holds no secrets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import LedgerError
from ledger.streaming.embedded import NatsServer
from ledger.streaming.store import EventStore
from tests.support.helpers import all_events

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


async def test_logs_hold_no_raw_tokens(
    client: LedgerClient,
    caplog: pytest.LogCaptureFixture,
    settings_for,  # type: ignore[no-untyped-def]
) -> None:
    """Every log record of a full lifecycle (reuse and forgeries included) is free of tokens."""
    caplog.set_level(logging.DEBUG)
    pair = await client.start_session("alice")
    newer = await client.rotate(pair.refresh_token)
    forged = pair.refresh_token[:-4] + "AAAA"
    with pytest.raises(LedgerError):
        await client.rotate(forged)
    await client.rotate(newer.refresh_token)
    with pytest.raises(LedgerError):
        await client.rotate(pair.refresh_token)  # two generations old: reuse, logged as a warning
    assert any("reuse" in r.getMessage() for r in caplog.records)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for token in (pair.refresh_token, newer.refresh_token, forged, pair.access_token, newer.access_token):
        assert token not in text
        assert token.rsplit(".", 1)[-1] not in text


async def test_internal_errors_log_no_input(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected failure is logged by type and place only: its text could quote a token."""
    from ledger.contracts.commands import RotateRequest
    from ledger.service.app import handle

    secret = "rt1.AAAAAAAAAAAAAAAAAAAAAA.0." + "S" * 43

    async def explode(req: RotateRequest) -> RotateRequest:
        raise RuntimeError(f"boom with {req.refresh_token}")

    reply = await handle(RotateRequest, explode, json.dumps({"refresh_token": secret}).encode())
    assert b'"code":"unavailable"' in reply and secret.encode() not in reply
    assert "RuntimeError" in caplog.text and secret not in caplog.text
