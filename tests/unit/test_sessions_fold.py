"""The sessions fold is pure, deterministic and exactly-once (no I/O: Hypothesis over histories)."""

from __future__ import annotations

import random
from datetime import timedelta
from functools import reduce

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain.decide import Family
from ledger.domain.events import SessionStarted, UserSessionsRevoked
from ledger.domain.refresh import TokenKeys
from projections.sessions.fold import (
    EMPTY,
    SessionRecord,
    UserCutRecord,
    apply,
    decode,
    encode,
    fold,
    is_active,
    session_key,
    snapshot,
    status,
    user_cut_key,
)
from tests.support.sessions_history import Generator, generate, recorded

seeds = st.integers(min_value=0, max_value=2**32)
sizes = st.integers(min_value=1, max_value=250)


@settings(max_examples=40, deadline=None)
@given(seeds, sizes)
def test_fold_equals_step_by_step_apply(seed: int, size: int) -> None:
    events = recorded(generate(seed, size))
    assert snapshot(fold(events)) == snapshot(reduce(apply, events, EMPTY))


@settings(max_examples=40, deadline=None)
@given(seeds, sizes, st.integers(min_value=0, max_value=250))
def test_resuming_from_any_checkpoint_gives_the_same_state(seed: int, size: int, cut: int) -> None:
    events = recorded(generate(seed, size))
    head, tail = events[: cut % (size + 1)], events[cut % (size + 1) :]
    assert snapshot(fold(tail, fold(head))) == snapshot(fold(events))


@settings(max_examples=40, deadline=None)
@given(seeds, sizes)
def test_redelivered_events_change_nothing(seed: int, size: int) -> None:
    """Any already-applied event delivered again, at any later point, is a no-op."""
    events = recorded(generate(seed, size))
    rng = random.Random(seed)
    noisy = []
    for i, rec in enumerate(events):
        noisy.append(rec)
        noisy.extend(rng.choice(events[: i + 1]) for _ in range(rng.randint(0, 2)))
    assert snapshot(fold(noisy)) == snapshot(fold(events))


@settings(max_examples=25, deadline=None)
@given(seeds, sizes)
def test_no_key_ever_goes_backwards(seed: int, size: int) -> None:
    state = EMPTY
    for rec in recorded(generate(seed, size)):
        nxt = apply(state, rec)
        for key, record in nxt.records.items():
            old = state.records.get(key)
            assert old is None or record.seq >= old.seq
        state = nxt


@settings(max_examples=25, deadline=None)
@given(seeds, sizes)
def test_canonical_bytes_round_trip(seed: int, size: int) -> None:
    for record in fold(recorded(generate(seed, size))).records.values():
        assert encode(decode(encode(record))) == encode(record)


@settings(max_examples=30, deadline=None)
@given(seeds, sizes)
def test_projected_family_is_the_ledgers_family(seed: int, size: int) -> None:
    """What the ledger reads (SessionStarted + latest family event, user cut) is what we hold."""
    events = recorded(generate(seed, size))
    state = fold(events)
    started: dict[str, tuple[SessionStarted, int]] = {}
    heads, cuts = {}, {}
    for rec in events:
        ev = rec.event
        if isinstance(ev, SessionStarted):
            started[ev.sid] = (ev, rec.seq)
        if isinstance(ev, UserSessionsRevoked):
            cuts[ev.sub] = rec.seq
        elif hasattr(ev, "sid"):
            heads[ev.sid] = (ev, rec.seq)
    for sid, (ev, seq) in started.items():
        record = state.records[session_key(sid)]
        assert isinstance(record, SessionRecord)
        head, head_seq = heads[sid]
        assert record.family() == Family(started=ev, start_seq=seq, head=head, head_seq=head_seq)
        cut = state.records.get(user_cut_key(ev.sub))
        assert (cut.seq if cut else None) == cuts.get(ev.sub)
    rotations = sum(type(r.event).__name__ == "TokenRotated" for r in events)
    assert rotations == sum(r.rotations for r in state.records.values() if isinstance(r, SessionRecord))


@settings(max_examples=25, deadline=None)
@given(seeds, sizes)
def test_expiry_is_answered_from_now_without_any_event(seed: int, size: int) -> None:
    state = fold(recorded(generate(seed, size)))
    for record in state.records.values():
        if not isinstance(record, SessionRecord):
            continue
        cut_rec = state.records.get(user_cut_key(record.started.sub))
        cut = cut_rec.cut_for(record.started.sid) if isinstance(cut_rec, UserCutRecord) else None
        ends = record.family().refresh_expires_at
        before, after = ends - timedelta(microseconds=1), ends
        if status(record, before, cut) == "revoked":
            assert not is_active(record, before, cut)
            continue
        assert is_active(record, before, cut) and status(record, before, cut) == "active"
        assert not is_active(record, after, cut) and status(record, after, cut) == "expired"


def test_generated_history_covers_every_event_type() -> None:
    names = {type(e).__name__ for _, e in generate(7, 3000, TokenKeys(b"k" * 32))}
    assert names == {
        "SessionStarted",
        "TokenRotated",
        "ReuseDetected",
        "SessionRevoked",
        "SessionSteppedUp",
        "UserSessionsRevoked",
        "SigningKeyAdded",
        "SigningKeyRetired",
    }


def test_a_rotation_appended_after_a_revoke_all_is_not_counted() -> None:
    """The ledger refused it (post-commit cut check): the head is the ledger's, the count is not."""
    gen = Generator(random.Random(3), TokenKeys(b"k" * 32), users=1)
    gen.start()
    gen.rotate()
    sid, live = next(iter(gen.live.items()))
    gen.revoke_user()  # user-0, the only user: the session is dead...
    gen.live[sid] = live
    gen.rotate()  # ...but a rotation that read before the cut is appended after it
    gen.live.pop(sid)  # and nothing rotates it again: the generator picks live sessions at random
    later_session = len(gen.events)
    gen.start()
    gen.rotate()  # a session started after the cut rotates normally
    events = recorded(gen.events)
    state = fold(events)
    record = state.records[session_key(sid)]
    assert isinstance(record, SessionRecord)
    assert record.rotations == 1 and record.head == events[3].event and record.head.generation == 2
    assert record.last_rotated_at == events[1].event.occurred_at
    newer = state.records[session_key(events[later_session].event.sid)]  # type: ignore[union-attr]
    assert isinstance(newer, SessionRecord) and newer.rotations == 1
