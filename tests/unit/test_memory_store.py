"""The in-memory event store passes the event-store contract (and NATS subject matching)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger.domain.events import SessionStarted
from ledger.eventstore import MemoryEventStore, subject_matches
from tests.support.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryEventStore:
        return MemoryEventStore()


@pytest.mark.parametrize(
    ("filter_", "subject", "matches"),
    [
        ("ledger.ev.s.X.*", "ledger.ev.s.X.started", True),
        ("ledger.ev.s.X.*", "ledger.ev.s.X.started.more", False),
        ("ledger.ev.s.X.*", "ledger.ev.s.Y.started", False),
        ("ledger.ev.>", "ledger.ev.s.X.started", True),
        ("ledger.ev.>", "ledger.ev", False),
        ("ledger.ev.u.*.revoked", "ledger.ev.u._YWxpY2U.revoked", True),
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("a.*.c", "a.b.c", True),
    ],
)
def test_subject_matching_follows_nats(filter_: str, subject: str, matches: bool) -> None:
    assert subject_matches(filter_, subject) is matches


def test_the_facts_cache_keeps_only_the_newest_families() -> None:
    """Bounded by ``facts_size`` (LEDGER_FACTS_CACHE on the JetStream store): the oldest go."""
    store = MemoryEventStore()
    store.facts_size = 2
    for i in range(4):
        started = SessionStarted(
            event_id=f"{i:032x}", occurred_at=datetime(2026, 12, 4, tzinfo=UTC), sid=f"{i:022d}",
            generation=0, token_hash="a" * 64, sub=f"u{i}", client_id=None, scopes=(),
            idle_ttl_s=60, absolute_ttl_s=3600,
        )  # fmt: skip
        store.remember_start(started, i + 1)
    assert [store.cached_sub(f"{i:022d}") for i in range(4)] == [None, None, "u2", "u3"]
