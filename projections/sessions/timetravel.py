"""Time travel for responders: the sessions valid at a past instant, from the log alone.

The events the ledger had decided by ``at`` (``occurred_at <= at``) go through the
projection's own pure fold, in stream order, and each session is judged at ``at`` by the
ledger's own liveness rule (``decide.check_alive`` via ``fold.is_active``): what a rebuild
of the sessions projection would have answered at that instant.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from ledger.contracts.queries import SessionView
from ledger.domain.events import RecordedEvent
from projections.sessions.answers import session_view
from projections.sessions.fold import SessionRecord, SessionsState, UserCutRecord, fold, user_cut_key


def state_at(events: Iterable[RecordedEvent], at: datetime) -> SessionsState:
    """The sessions fold of the events decided at or before ``at``."""
    return fold(rec for rec in events if rec.event.occurred_at <= at)


def views_at(
    state: SessionsState, at: datetime, *, sub: str | None = None, include_inactive: bool = False
) -> tuple[SessionView, ...]:
    """Every session (of ``sub``, if given) as the projection would have shown it at ``at``:
    only the valid ones unless ``include_inactive``; ordered by start."""
    out = []
    for record in state.records.values():
        if not isinstance(record, SessionRecord) or (sub is not None and record.started.sub != sub):
            continue
        cut = state.records.get(user_cut_key(record.started.sub))
        view = session_view(record, at, cut.seq if isinstance(cut, UserCutRecord) else None)
        if include_inactive or view.active:
            out.append(view)
    return tuple(sorted(out, key=lambda v: v.start_seq))
