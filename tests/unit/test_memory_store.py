"""The in-memory event store passes the event-store contract (and NATS subject matching)."""

from __future__ import annotations

import pytest

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
