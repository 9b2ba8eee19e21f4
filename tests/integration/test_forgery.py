"""Invariants 3 and 9: forged or malformed input is refused with a typed error, appends nothing."""

from __future__ import annotations

import base64
import json
import secrets

import pytest

from ledger.client import LedgerClient
from ledger.domain.errors import BadRequest, LedgerError, SessionNotFound, TokenInvalid
from ledger.streaming.store import EventStore


def _forged(sid: str, generation: int = 0) -> str:
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"rt1.{sid}.{generation}.{secret}"


async def test_forged_tokens_for_a_real_session_change_nothing(
    client: LedgerClient, store: EventStore
) -> None:
    pair = await client.start_session("alice")
    await client.rotate(pair.refresh_token)
    before = await store.last_seq()
    attacks = [
        _forged(pair.sid, 0),  # right sid, superseded generation: would look like reuse if trusted
        _forged(pair.sid, 1),  # right sid, current generation
        _forged(pair.sid, 7),  # a generation from the future
        pair.refresh_token[:-3],  # truncated
        pair.refresh_token + "A",
        pair.refresh_token.replace(".0.", ".1."),
        f"rt1.{pair.sid}.*.{'A' * 43}",
        f"rt1.{pair.sid}.>.{'A' * 43}",
        f"rt1.{pair.sid[:-1]}*.0.{'A' * 43}",
        "rt1.a.b.c.d",
        "x" * 10_000,  # 10 kB of garbage
        "",
    ]
    for token in attacks:
        with pytest.raises((TokenInvalid, BadRequest)) as info:
            await client.rotate(token)
        assert token not in info.value.message or not token
        with pytest.raises((TokenInvalid, BadRequest)):
            await client.logout(token)  # knowing a sid must not let anyone revoke it
    assert await store.last_seq() == before
    # ... and the real session is untouched
    assert (await client.rotate(pair.refresh_token)).generation == 1


async def test_unknown_session_is_invalid_not_revealing(client: LedgerClient, store: EventStore) -> None:
    before = await store.last_seq()
    with pytest.raises(TokenInvalid):
        await client.rotate(_forged("A" * 22))
    with pytest.raises(SessionNotFound):
        await client.revoke_session("A" * 22)
    assert await store.last_seq() == before


@pytest.mark.parametrize(
    ("command", "body"),
    [
        ("rotate", b"not json"),
        ("rotate", b"{}"),
        ("rotate", b'{"refresh_token": 5}'),
        ("rotate", b'{"refresh_token": "x", "extra": 1}'),
        ("rotate", json.dumps({"refresh_token": "x" * 20_000}).encode()),
        ("start", b'{"sub": ""}'),
        ("start", b'{"sub": "has space"}'),
        ("start", b'{"sub": "ctl\\u0000"}'),
        ("start", json.dumps({"sub": "a" * 256}).encode()),
        ("start", json.dumps({"sub": "a", "scopes": ["s"] * 33}).encode()),
        ("start", json.dumps({"sub": "a", "scopes": ["with space"]}).encode()),
        ("start", json.dumps({"sub": "a", "client_id": "a.b*>"}).encode()),
        ("revoke", b'{"sid": "a.b.c"}'),
        ("revoke", b'{"sid": "AAAAAAAAAAAAAAAAAAAAAA", "reason": "because"}'),
        ("revoke_user", b'{"sub": "x y"}'),
        ("revoke_user", b"[" * 5000),
    ],
)
async def test_bad_requests_get_a_typed_error_and_append_nothing(
    client: LedgerClient, store: EventStore, command: str, body: bytes
) -> None:
    before = await store.last_seq()
    with pytest.raises(LedgerError) as info:
        await client.request_raw(command, body)
    assert info.value.code in {"bad_request", "invalid_token"}
    assert await store.last_seq() == before


async def test_subjects_never_carry_raw_user_input(client: LedgerClient, store: EventStore) -> None:
    """A sub full of subject metacharacters lands in one encoded subject token."""
    sub = "evil.*.>.user"
    pair = await client.start_session(sub)
    rev = await client.revoke_user(sub)
    last = await store.last(store.subjects.user(sub))
    assert last is not None and last.seq == rev.seq
    assert last.subject.count(".") == 4 and "*" not in last.subject and ">" not in last.subject
    assert pair.sub == sub
