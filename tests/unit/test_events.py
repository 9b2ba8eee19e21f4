"""Event vocabulary: frozen, strict, versioned, and free of secrets."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from ledger.domain import events
from ledger.domain.events import (
    EVENT_ADAPTER,
    UPCASTERS,
    SessionStarted,
    TokenRotated,
    decode_event,
    encode_event,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STARTED = SessionStarted(
    event_id="a" * 32,
    occurred_at=NOW,
    sid="S" * 22,
    generation=0,
    token_hash="0" * 64,
    sub="alice",
    client_id="web",
    scopes=("read",),
    idle_ttl_s=60,
    absolute_ttl_s=600,
)

# Bytes as schema version 1 wrote them: must stay readable by every later version.
V1_BYTES = (
    b'{"schema_version":1,"event_id":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","occurred_at":"2026-01-01T00:00:00Z",'
    b'"sid":"SSSSSSSSSSSSSSSSSSSSSS","generation":4,"token_hash":"' + b"1" * 64 + b'","type":"TokenRotated"}'
)


def test_round_trip_through_the_union() -> None:
    assert decode_event(encode_event(STARTED)) == STARTED


def test_stored_v1_bytes_still_decode() -> None:
    event = decode_event(V1_BYTES)
    assert isinstance(event, TokenRotated) and event.generation == 4


def test_upcasters_run_before_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = {
        "schema_version": 0,
        "type": "TokenRotated",
        "event_id": "c" * 32,
        "occurred_at": "2026-01-01T00:00:00Z",
        "sid": "S" * 22,
        "gen": 2,
        "token_hash": "2" * 64,
    }

    def v0_to_v1(d: dict[str, Any]) -> dict[str, Any]:
        d["generation"] = d.pop("gen")
        return {**d, "schema_version": 1}

    monkeypatch.setitem(UPCASTERS, ("TokenRotated", 0), v0_to_v1)
    event = EVENT_ADAPTER.validate_python(events.upcast(legacy))
    assert isinstance(event, TokenRotated) and event.generation == 2


def test_events_are_frozen_and_strict() -> None:
    with pytest.raises(ValidationError):
        STARTED.sub = "mallory"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        decode_event(encode_event(STARTED)[:-1] + b',"refresh_token":"x"}')
    with pytest.raises(ValidationError):
        SessionStarted(**{**STARTED.model_dump(), "occurred_at": datetime(2026, 1, 1)})  # naive time


def test_no_event_has_a_field_for_secret_material() -> None:
    allowed = {"token_hash", "public_jwk"}
    union = get_args(get_args(events.Event)[0])
    for model in union:
        for name in model.model_fields:
            if any(word in name for word in ("token", "secret", "key", "password", "private")):
                assert name in allowed, f"{model.__name__}.{name} looks like secret material"
    assert all("d" not in k for k in ("kty", "crv", "x", "y"))  # public JWK members only


def test_discriminator_is_a_stable_string() -> None:
    for model in get_args(get_args(events.Event)[0]):
        assert model.model_fields["type"].default == model.__name__


def test_ok_reply_is_a_valid_reply() -> None:
    from ledger.contracts.commands import Reply, Revocation, ok

    rev = Revocation(seq=3, sid="S" * 22, revoked_at=NOW)
    reply = Reply.model_validate_json(ok(rev))
    assert reply.ok and reply.result is not None and Revocation.model_validate(reply.result) == rev
