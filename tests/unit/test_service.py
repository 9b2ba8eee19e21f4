"""The command service's I/O logic (CAS retries, races, reuse, revoke-all ordering) on the
in-memory event store: the same code paths as production, in milliseconds."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from ledger.contracts.commands import (
    LogoutRequest,
    RevokeUserRequest,
    RotateRequest,
    StartSessionRequest,
)
from ledger.contracts.subjects import COMMANDS
from ledger.domain.decide import ReusePolicy
from ledger.domain.errors import (
    ConcurrencyConflict,
    SessionRevokedError,
    TokenInvalid,
    TokenReused,
    Unavailable,
)
from ledger.domain.events import (
    Event,
    ReuseDetected,
    SessionStarted,
    TokenRotated,
    UserSessionsRevoked,
)
from ledger.domain.events import SessionRevoked as SessionRevokedEvent
from ledger.eventstore import MemoryEventStore
from ledger.service.app import command_routes
from ledger.service.signer import AccessTokenSigner
from tests.support.memory_service import make


def types(store: MemoryEventStore) -> list[str]:
    return [type(rec.event).__name__ for rec in store.records]


def events_of(store: MemoryEventStore, kind: type[Event]) -> list[Event]:  # type: ignore[valid-type]
    return [rec.event for rec in store.records if isinstance(rec.event, kind)]


async def test_fifty_concurrent_rotations_append_one_successor(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    pair = await service.start_session(StartSessionRequest(sub="alice"))
    answers = await asyncio.gather(*(service.rotate(RotateRequest(refresh_token=pair.refresh_token))
                                     for _ in range(50)))  # fmt: skip
    assert {a.refresh_token for a in answers} == {answers[0].refresh_token}
    assert {a.generation for a in answers} == {1}
    assert types(store) == ["SessionStarted", "TokenRotated"]


async def test_retry_inside_the_grace_window_gets_the_same_successor_and_appends_nothing(
    signer: AccessTokenSigner,
) -> None:
    service, store, clock = make(signer, grace_window=timedelta(seconds=30))
    pair = await service.start_session(StartSessionRequest(sub="alice"))
    first = await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    clock.advance(29)
    again = await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    assert again.refresh_token == first.refresh_token and len(store.records) == 2


@pytest.mark.parametrize("policy", [ReusePolicy.FAMILY, ReusePolicy.USER])
async def test_reuse_after_the_grace_window_revokes(signer: AccessTokenSigner, policy: ReusePolicy) -> None:
    service, store, clock = make(signer, grace_window=timedelta(seconds=30), reuse_policy=policy)
    pair = await service.start_session(StartSessionRequest(sub="alice"))
    current = await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    clock.advance(31)
    with pytest.raises(TokenReused):
        await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    with pytest.raises(SessionRevokedError):
        await service.rotate(RotateRequest(refresh_token=current.refresh_token))
    expected = {
        ReusePolicy.FAMILY: ["SessionStarted", "TokenRotated", "ReuseDetected", "SessionRevoked"],
        ReusePolicy.USER: ["SessionStarted", "TokenRotated", "UserSessionsRevoked", "ReuseDetected"],
    }  # the widest revocation is appended first: a crash in between cannot narrow it
    assert types(store) == expected[policy]
    detected = events_of(store, ReuseDetected)[0]
    assert isinstance(detected, ReuseDetected) and detected.presented_generation == 0


async def test_forged_and_unknown_tokens_append_nothing(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    pair = await service.start_session(StartSessionRequest(sub="alice"))
    sid = pair.sid
    forged = [f"rt1.{sid}.0.{'A' * 43}", f"rt1.{sid}.5.{'B' * 43}", f"rt1.{'C' * 22}.0.{'D' * 43}", "junk"]
    for token in forged:
        with pytest.raises(TokenInvalid):
            await service.rotate(RotateRequest(refresh_token=token))
        with pytest.raises(TokenInvalid):
            await service.logout(LogoutRequest(refresh_token=token))
    assert types(store) == ["SessionStarted"]


async def test_a_revoke_all_that_lands_between_read_and_append_wins(signer: AccessTokenSigner) -> None:
    """Invariant 8: the rotation is appended, but the answer is refused (post-commit check)."""
    service, store, _ = make(signer)
    pair = await service.start_session(StartSessionRequest(sub="alice"))
    original = store.append

    async def revoke_first(subject: str, event: Event, *, expect: tuple[str, int] | None = None) -> int:  # type: ignore[valid-type]
        if isinstance(event, TokenRotated):
            store.append = original  # type: ignore[method-assign]
            await service.revoke_user(RevokeUserRequest(sub="alice"))
        return await original(subject, event, expect=expect)

    store.append = revoke_first  # type: ignore[method-assign]
    with pytest.raises(SessionRevokedError):
        await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    assert types(store) == ["SessionStarted", "UserSessionsRevoked", "TokenRotated"]
    with pytest.raises(SessionRevokedError):
        await service.rotate(RotateRequest(refresh_token=pair.refresh_token))


async def test_endless_contention_is_unavailable_not_a_wrong_answer(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    pair = await service.start_session(StartSessionRequest(sub="alice"))

    async def always_conflict(subject: str, event: Event, *, expect: tuple[str, int] | None = None) -> int:  # type: ignore[valid-type]
        raise ConcurrencyConflict(subject, 0)

    store.append = always_conflict  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await service.rotate(RotateRequest(refresh_token=pair.refresh_token))
    assert types(store) == ["SessionStarted"]


async def test_logout_needs_the_token_and_is_idempotent(signer: AccessTokenSigner) -> None:
    service, store, _ = make(signer)
    pair = await service.start_session(StartSessionRequest(sub="alice"))
    first = await service.logout(LogoutRequest(refresh_token=pair.refresh_token))
    second = await service.logout(LogoutRequest(refresh_token=pair.refresh_token))
    assert first.seq is not None and second.already_revoked
    assert [type(e).__name__ for e in events_of(store, SessionRevokedEvent)] == ["SessionRevoked"]
    assert isinstance(store.records[0].event, SessionStarted)
    assert not events_of(store, UserSessionsRevoked)


def test_the_command_table_serves_every_command_subject(signer: AccessTokenSigner) -> None:
    service, _, _ = make(signer)
    assert tuple(name for name, _, _ in command_routes(service)) == COMMANDS
