"""A ledger service on the in-memory store with a controllable clock (unit tests, no server)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ledger.config import Settings
from ledger.domain.refresh import TokenKeys
from ledger.eventstore.memory import MemoryEventStore
from ledger.service.handlers import LedgerService
from ledger.service.keys import load_or_create_signing_key
from ledger.service.signer import AccessTokenSigner


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def new_signer(key_dir: Path) -> AccessTokenSigner:
    key = load_or_create_signing_key(key_dir, "ES256", None)
    return AccessTokenSigner(key, issuer="i", audience="a", ttl=timedelta(minutes=5))


def make(signer: AccessTokenSigner, **settings: Any) -> tuple[LedgerService, MemoryEventStore, Clock]:
    store, clock = MemoryEventStore(), Clock()
    config = Settings(data_dir=Path("/nonexistent"), **settings)
    return LedgerService(store, TokenKeys(secrets.token_bytes(32)), signer, config, clock=clock), store, clock
