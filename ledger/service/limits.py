"""The per-user session cap, decided race-free.

A session is started first (its tokens are not handed out yet), then admitted: the
user's latest ``SessionAdmitted`` lists the sessions the cap counts; those still alive
are weighed against the limit by ``decide.admit``, evictions are revoked (reason
``session_limit``), and the new admission is appended with compare-and-set on all of
the user's subjects (``<p>.ev.u.<sub>.*``). Two concurrent starts cannot both be
admitted against the same list: the loser re-reads and decides again. A refused session
is revoked before the refusal is answered, so no token of it ever leaves the service.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from ledger.config import Settings
from ledger.contracts.subjects import Subjects
from ledger.domain import decide
from ledger.domain.decide import Family
from ledger.domain.errors import ConcurrencyConflict, LedgerError, SessionLimitReached, Unavailable
from ledger.domain.events import SessionAdmitted, UserSessionsRevoked
from ledger.domain.ids import new_event_id
from ledger.eventstore.base import BaseEventStore

MAX_ADMIT_ATTEMPTS = 64  # every round admits one of the racing starts; 64 outlasts any burst we test
Revoke = Callable[[str], Awaitable[object]]


class SessionLimiter:
    def __init__(
        self, store: BaseEventStore, settings: Settings, clock: Callable[[], datetime], revoke: Revoke
    ) -> None:
        self.store = store
        self.subjects = Subjects(settings.subject_prefix)
        self.limit = settings.max_sessions_per_user
        self.policy = settings.session_limit_policy
        self.per_client = settings.session_limit_scope == "client"
        self.clock = clock
        self.revoke = revoke  # revokes a session with reason session_limit (idempotent)

    async def admit(self, family: Family) -> None:
        """Return once ``family`` is admitted; ``SessionLimitReached`` after revoking it."""
        sub, sid = family.started.sub, family.started.sid
        for attempt in range(MAX_ADMIT_ATTEMPTS):
            index, position = await self._index(sub)
            if index is not None and sid in index.live:
                return  # admitted already (a retried idempotent start, or the racing original)
            try:
                if await self._try_admit(family, index, position):
                    return
            except SessionLimitReached:
                await self.revoke(sid)
                raise
            await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise Unavailable("too many concurrent session starts for this user; retry")

    async def _try_admit(self, family: Family, index: SessionAdmitted | None, position: int) -> bool:
        sub, sid, client = family.started.sub, family.started.sid, family.started.client_id
        alive = await self._alive(sub, index.live if index is not None else ())
        counts = [
            (f.started.sid, f.start_seq)
            for f in alive
            if not self.per_client or f.started.client_id == client
        ]
        others = [
            (f.started.sid, f.start_seq) for f in alive if self.per_client and f.started.client_id != client
        ]
        admission = decide.admit(
            sub=sub, sid=sid, live=counts, limit=self.limit, policy=self.policy,
            now=self.clock(), event_id=new_event_id(), uncounted=others,
        )  # fmt: skip
        for victim in admission.evict:
            await self.revoke(victim)
        try:
            await self.store.append(
                self.subjects.user_admitted(sub),
                admission.event,
                expect=(self.subjects.user_filter(sub), position),
            )
        except ConcurrencyConflict:
            return False
        return True

    async def _index(self, sub: str) -> tuple[SessionAdmitted | None, int]:
        """The user's latest admission and the CAS position of all the user's events."""
        (_, position), last = await asyncio.gather(
            self.store.head(self.subjects.user_filter(sub)), self.store.last(self.subjects.user_admitted(sub))
        )
        index = last.event if last is not None and isinstance(last.event, SessionAdmitted) else None
        return index, position

    async def _alive(self, sub: str, sids: Sequence[str]) -> list[Family]:
        """The listed sessions that are alive now."""
        cut_rec, families = await asyncio.gather(
            self.store.last(self.subjects.user(sub)), asyncio.gather(*(self.store.family(s) for s in sids))
        )
        keep = cut_rec.event.keep_sid if cut_rec and isinstance(cut_rec.event, UserSessionsRevoked) else None
        cut = cut_rec.seq if cut_rec is not None else None
        now = self.clock()
        alive = []
        for fam in families:
            if fam is not None and _is_alive(fam, decide.effective_cut(cut, keep, fam.started.sid), now):
                alive.append(fam)
        return alive


def _is_alive(family: Family, cut: int | None, now: datetime) -> bool:
    try:
        decide.check_alive(family, cut, now)
    except LedgerError:
        return False
    return True
