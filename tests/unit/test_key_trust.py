"""Who may add or retire a signing key: the pure trust rules of ``KeyRing`` (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledger.domain.access import KeyNotTrusted, KeyRing
from ledger.domain.events import SigningKeyActivated, SigningKeyAdded, SigningKeyRetired
from ledger.domain.ids import new_event_id
from ledger.domain.keys import KeyBook, activated_statement, added_statement, retired_statement
from ledger.service.keys import SigningKey, generate, key_id, sign_statement

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def key(alg: str = "ES256") -> SigningKey:
    private = generate(alg)
    return SigningKey(key_id(private.public_key()), alg, private)


def added(new: SigningKey, by: SigningKey | None, activates_at: datetime | None = None) -> SigningKeyAdded:
    jwk = new.public_jwk()
    proof = sign_statement(added_statement(new.kid, new.alg, jwk, activates_at), by) if by else None
    return SigningKeyAdded(event_id=new_event_id(), occurred_at=NOW, kid=new.kid, alg=new.alg,  # type: ignore[arg-type]
                           public_jwk=jwk, activates_at=activates_at, proof=proof)  # fmt: skip


def retired(kid: str, by: SigningKey | None) -> SigningKeyRetired:
    proof = sign_statement(retired_statement(kid), by) if by else None
    return SigningKeyRetired(event_id=new_event_id(), occurred_at=NOW, kid=kid, proof=proof)


def test_the_first_key_is_trusted_on_first_use_and_every_later_one_needs_a_trusted_signature() -> None:
    first, second, forged = key(), key("EdDSA"), key()
    ring = KeyRing()
    ring.add_event(added(first, None))
    for attempt in (added(forged, None), added(forged, forged)):  # unsigned, self-signed
        with pytest.raises(KeyNotTrusted):
            ring.add_event(attempt)
    ring.add_event(added(second, first))
    assert set(ring.keys) == {first.kid, second.kid}


def test_a_proof_over_another_statement_or_by_a_retired_key_authorises_nothing() -> None:
    first, second, third = key(), key(), key("RS256")
    ring = KeyRing()
    ring.add_event(added(first, None))
    event = added(second, first)
    tampered = event.model_copy(update={"activates_at": NOW})  # the proof covered "at once"... now changed
    with pytest.raises(KeyNotTrusted):
        ring.add_event(tampered)
    ring.add_event(event)
    with pytest.raises(KeyNotTrusted):
        ring.retire_event(retired(first.kid, None))
    ring.retire_event(retired(first.kid, second))
    with pytest.raises(KeyNotTrusted):  # the retired (perhaps stolen) key vouches for no one
        ring.add_event(added(third, first))
    ring.add_event(added(third, second))
    assert first.kid in ring.retired and third.kid in ring.keys


def test_the_key_book_signs_with_the_newest_activated_unretired_key() -> None:
    first, second = key(), key()
    later = datetime(2026, 1, 2, tzinfo=UTC)
    book = KeyBook()
    book.added[first.kid] = added(first, None)
    book.added[second.kid] = added(second, first, activates_at=later)
    assert book.active(NOW).kid == first.kid  # type: ignore[union-attr]
    assert [e.kid for e in book.pending(NOW)] == [second.kid]
    assert book.active(later).kid == second.kid  # type: ignore[union-attr]
    assert book.superseded_at(first.kid) == later
    book.retired.add(second.kid)
    assert book.active(later).kid == first.kid  # type: ignore[union-attr]


def test_trust_on_first_use_means_the_first_key_event_even_when_it_is_unusable() -> None:
    """Review finding: if the genesis event failed to load, the *next* unsigned key was trusted."""
    broken = added(key(), None).model_copy(update={"public_jwk": {"kty": "EC", "kid": "x"}})
    ring = KeyRing()
    with pytest.raises(Exception):  # noqa: B017 - whatever the broken JWK raises
        ring.add_event(broken)
    with pytest.raises(KeyNotTrusted):
        ring.add_event(added(key(), None))
    assert ring.keys == {}


def activated(kid: str, by: SigningKey | None, at: datetime = NOW) -> SigningKeyActivated:
    proof = sign_statement(activated_statement(kid), by) if by else None
    return SigningKeyActivated(event_id=new_event_id(), occurred_at=at, kid=kid, verifiers=2, proof=proof)


def test_with_a_root_key_nothing_is_trusted_on_first_use() -> None:
    root, first, second, forged = key(), key(), key("EdDSA"), key()
    ring = KeyRing.rooted(root.public_jwk())
    for attempt in (added(forged, None), added(forged, forged)):  # the genesis is no exception
        with pytest.raises(KeyNotTrusted):
            ring.add_event(attempt)
    ring.add_event(added(first, root))
    ring.add_event(added(second, first))  # later keys: by a trusted key, as without a root
    with pytest.raises(KeyNotTrusted):
        ring.add_event(added(forged, None))
    assert set(ring.keys) == {first.kid, second.kid}  # the root verifies no token
    with pytest.raises(ValueError):
        KeyRing.rooted({**root.public_jwk(), "alg": "HS256"})


def test_a_key_signs_at_its_acknowledgement_or_its_deadline_whichever_first() -> None:
    first, second = key(), key()
    deadline, acked = datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, 12, tzinfo=UTC)
    ring, book = KeyRing(), KeyBook()
    for event in (added(first, None), added(second, first, activates_at=deadline)):
        ring.add_event(event)
        book.apply(event)
    with pytest.raises(KeyNotTrusted):  # an unsigned acknowledgement changes nothing
        ring.activate_event(activated(second.kid, None, acked))
    event = activated(second.kid, first, acked)
    ring.activate_event(event)
    book.apply(event)
    assert book.active(acked).kid == second.kid  # type: ignore[union-attr]
    assert book.superseded_at(first.kid) == acked
    assert book.pending(NOW) == [book.added[second.kid]]


def test_superseded_keys_retire_after_their_longest_token_and_rotation_is_scheduled() -> None:
    first, second = key(), key()
    hour, day = timedelta(hours=1), timedelta(days=1)
    book = KeyBook()
    book.apply(added(first, None))
    assert book.retirable(NOW + 30 * day, hour) == []  # it signs: never retired automatically
    assert not book.rotation_due(NOW + day - timedelta(seconds=1), day)
    assert book.rotation_due(NOW + day, day) and not book.rotation_due(NOW + 30 * day, None)
    book.apply(added(second, first, activates_at=NOW + day + hour))
    assert not book.rotation_due(NOW + day, day)  # one pending already: no second new key
    switch = NOW + day + hour
    assert book.retirable(switch + hour - timedelta(seconds=1), hour) == []
    assert book.retirable(switch + hour, hour) == [first.kid]
    book.apply(retired(first.kid, second))
    assert book.retirable(switch + 2 * hour, hour) == []
