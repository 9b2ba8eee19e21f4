"""The hint cache's bookkeeping (``ledger.service.heads``) and the user of a user subject."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from ledger.contracts.subjects import Subjects
from ledger.domain.decide import Family, evolve
from ledger.domain.events import RevokeReason, SessionRevoked, SessionStarted
from ledger.service.heads import Heads

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def family(sid: str, sub: str, seq: int = 1) -> Family:
    started = SessionStarted(
        event_id="0" * 32, occurred_at=NOW, sid=sid, generation=0, token_hash="a" * 64, sub=sub,
        client_id=None, scopes=(), idle_ttl_s=3600, absolute_ttl_s=86400,
    )  # fmt: skip
    return evolve(None, started, seq)


def sid(i: int) -> str:
    return f"{i:022d}"


def test_lru_keeps_the_newest_and_the_user_index_follows() -> None:
    heads = Heads(size=3)
    for i in range(5):
        heads.put(family(sid(i), "u"), None, None)
    assert len(heads) == 3 and heads.get(sid(0)) is None and heads.get(sid(4)) is not None
    heads.get(sid(2))  # used: now the newest
    heads.put(family(sid(9), "v"), 7, 9)
    assert heads.get(sid(3)) is None and heads.get(sid(2)) is not None
    heads.forget_user("u")
    assert len(heads) == 1 and heads.get(sid(9)) == (family(sid(9), "v"), 7, 9)
    heads.forget_user("v")
    heads.forget_user("nobody")
    assert len(heads) == 0 and heads._by_user == {}


def test_a_terminal_family_is_dropped_not_remembered_and_size_0_is_off() -> None:
    off = Heads(size=0)
    off.put(family(sid(1), "u"), None, 1)
    assert len(off) == 0 and off._by_user == {}
    fam = family(sid(1), "u")
    heads = Heads(size=10)
    heads.put(fam, None, 1)
    revoked = SessionRevoked(
        event_id="1" * 32, occurred_at=NOW + timedelta(seconds=1), sid=sid(1), generation=0,
        token_hash="a" * 64, sub="u", reason=RevokeReason.ADMIN, requested_at=NOW,
    )  # fmt: skip
    heads.put(evolve(fam, revoked, 2), None, 2)
    assert heads.get(sid(1)) is None and heads._by_user == {}


@given(st.lists(st.tuples(st.sampled_from(["put", "drop", "forget"]), st.integers(0, 9), st.integers(0, 3))))
def test_the_user_index_always_names_exactly_the_remembered_sids(ops: list[tuple[str, int, int]]) -> None:
    heads = Heads(size=4)
    owner: dict[str, str] = {}
    for op, i, u in ops:
        s, sub = sid(i), f"user{u}"
        if op == "put":
            sub = owner.setdefault(s, sub)  # a sid belongs to one user
            heads.put(family(s, sub), None, None)
        elif op == "drop":
            heads.drop(s)
        else:
            heads.forget_user(sub)
        remembered = {x for x in (sid(n) for n in range(10)) if x in heads._known}
        assert remembered == set().union(*heads._by_user.values()) and len(heads) <= 4
        assert all(heads._known[x][0].started.sub == user for user, xs in heads._by_user.items() for x in xs)


@given(st.text(min_size=1, max_size=64), st.sampled_from(["ledger", "acme.prod"]))
def test_user_of_reads_back_the_user_of_every_user_subject(sub: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    assert subjects.user_of(subjects.user(sub)) == sub
    assert subjects.user_of(subjects.family_event(sid(1), "revoked")) is None
    assert subjects.user_of(f"{prefix}.ev.u.not-base64!.revoked") is None
