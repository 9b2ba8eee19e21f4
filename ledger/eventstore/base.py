"""The abstract event store: four primitives per adapter, family reads written once."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence

from ledger.contracts.subjects import Subjects
from ledger.domain.decide import Family, effective_cut
from ledger.domain.errors import LedgerError
from ledger.domain.events import Event, FamilyEvent, RecordedEvent, SessionStarted, UserSessionsRevoked

FACTS_CACHE_SIZE = 100_000  # families' SessionStarted (~2.2 KB each measured): LEDGER_FACTS_CACHE


def subject_matches(filter_: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = filter_.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class BaseEventStore(ABC):
    """Append with compare-and-set, last event by (wildcard) subject, read in order.

    ``append(subject, event, expect=(filter, seq))`` raises ``ConcurrencyConflict``
    unless the last event matching ``filter`` is at ``seq`` (0: none). An append
    without ``expect`` whose event id was already appended returns the original
    sequence and appends nothing (the server's duplicate window).
    """

    subjects: Subjects

    def __init__(self, subjects: Subjects, facts_size: int = FACTS_CACHE_SIZE) -> None:
        self.subjects = subjects
        self.facts_size = facts_size
        self._facts: OrderedDict[str, tuple[SessionStarted, int]] = OrderedDict()

    @abstractmethod
    async def ensure_stream(self) -> None: ...

    @abstractmethod
    async def append(self, subject: str, event: Event, *, expect: tuple[str, int] | None = None) -> int: ...

    @abstractmethod
    async def last(self, subject: str) -> RecordedEvent | None: ...

    async def head(self, subject: str) -> tuple[RecordedEvent | None, int]:
        """The last event on ``subject`` and the subject's last sequence (the CAS position).
        They differ only where a message that is not an event was skipped."""
        rec = await self.last(subject)
        return rec, 0 if rec is None else rec.seq

    @abstractmethod
    async def last_seq(self) -> int: ...

    @abstractmethod
    def read(self, *, from_seq: int = 1, follow: bool = False) -> AsyncIterator[RecordedEvent]: ...

    async def append_chain(
        self,
        subject_of: Callable[[FamilyEvent], str],
        events: Sequence[FamilyEvent],
        filter_: str,
        expected: int,
    ) -> int:
        """Append several family events, each a CAS on the one before it."""
        seq = expected
        for event in events:
            seq = await self.append(subject_of(event), event, expect=(filter_, seq))
        return seq

    async def family(self, sid: str) -> Family | None:
        """Facts (cached forever) + latest event: O(1) whatever the family's length."""
        head, position = await self.head(self.subjects.family_filter(sid))
        if head is None:
            return None
        facts = await self._facts_for(sid, head)
        event = head.event
        if not isinstance(event, FamilyEvent):
            raise LedgerError(f"family {sid} holds a foreign event")
        return Family(started=facts[0], start_seq=facts[1], head=event, head_seq=position)

    def remember_start(self, started: SessionStarted, seq: int) -> None:
        """A family's facts as its writer appended them (later reads of it are then one batch)."""
        self._facts[started.sid] = (started, seq)
        if len(self._facts) > self.facts_size:
            self._facts.popitem(last=False)

    def cached_sub(self, sid: str) -> str | None:
        cached = self._facts.get(sid)
        return None if cached is None else cached[0].sub

    async def _facts_for(self, sid: str, head: RecordedEvent) -> tuple[SessionStarted, int]:
        if isinstance(head.event, SessionStarted):
            facts = (head.event, head.seq)
        elif (cached := self._facts.get(sid)) is not None:
            return cached
        else:
            rec = await self.last(self.subjects.family_event(sid, "started"))
            if rec is None or not isinstance(rec.event, SessionStarted):
                raise LedgerError(f"family {sid} has no SessionStarted")
            facts = (rec.event, rec.seq)
        self.remember_start(*facts)
        return facts

    async def family_and_cut(self, sid: str) -> tuple[Family | None, int | None, int | None]:
        """The family, its user's cut, and the stream sequence this view is complete up to.

        The third value lets a writer skip the post-commit cut check (invariant 8) when its
        append landed right after the view (nothing, so no revoke-all, came between); None
        means unknown, and the check must re-read the cut. Both reads go out at once when
        the family's user is cached.
        """
        sub = self.cached_sub(sid)
        if sub is not None:
            family, cut = await asyncio.gather(self.family(sid), self.user_cut(sub, sid))
            return family, cut, None
        family = await self.family(sid)
        if family is None:
            return None, None, None
        return family, await self.user_cut(family.started.sub, sid), None

    async def user_cut(self, sub: str, sid: str | None = None) -> int | None:
        """Stream sequence of the user's latest revoke-all: sessions started before it are dead.
        With ``sid``: the cut for that session (none if a "sign out the others" kept it)."""
        rec = await self.last(self.subjects.user(sub))
        if rec is None:
            return None
        keep = rec.event.keep_sid if isinstance(rec.event, UserSessionsRevoked) else None
        return rec.seq if sid is None else effective_cut(rec.seq, keep, sid)
