"""The event-store port: what the service needs of a log, with an in-memory adapter.

``ledger.streaming.store.EventStore`` is the production adapter; ``MemoryEventStore``
passes the same contract suite (``tests/support/store_contract.py``) and makes the
service's retry, race and reuse logic testable in milliseconds.
"""

from ledger.eventstore.base import BaseEventStore, subject_matches
from ledger.eventstore.memory import MemoryEventStore

__all__ = ["BaseEventStore", "MemoryEventStore", "subject_matches"]
