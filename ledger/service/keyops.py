"""Operator actions on signing keys: list, JWKS, rotate, retire. Each appends one signed key
event with compare-and-set on the key subjects, so concurrent operators (or instances)
cannot add two keys for one rotation."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from nats.aio.client import Client as NATS

from ledger.config import Settings
from ledger.domain.access import DEFAULT_LEEWAY
from ledger.domain.errors import BadRequest, ConcurrencyConflict, SessionNotFound
from ledger.domain.events import KeyEvent, SigningKeyActivated, SigningKeyAdded, SigningKeyRetired
from ledger.domain.ids import new_event_id
from ledger.domain.keys import KeyBook, added_statement, retired_statement
from ledger.service.keys import SigningKey, create_signing_key, sign_statement
from ledger.service.keyset import ServiceKeys
from ledger.streaming.keys import KeyFollower
from ledger.streaming.store import EventStore


async def follow(nc: NATS, settings: Settings) -> KeyFollower:
    return await KeyFollower(nc, settings).start()


def longest_token(settings: Settings) -> timedelta:
    """How long after a key stops signing a token it signed may still be accepted somewhere."""
    return settings.access_ttl + DEFAULT_LEEWAY


def key_rows(book: KeyBook, now: datetime) -> list[dict[str, Any]]:
    active = book.active(now)
    rows = []
    for kid, e in book.added.items():
        status = "retired" if kid in book.retired else "active" if active is e else "pending"
        if status == "pending" and (e.activates_at is None or e.activates_at <= now):
            status = "verifying"  # superseded by a newer key, still accepted until retired
        rows.append({"kid": kid, "alg": e.alg, "status": status, "added_at": e.occurred_at,
                     "activates_at": e.activates_at, "signed": e.proof is not None})  # fmt: skip
    return rows


def jwks(book: KeyBook) -> dict[str, list[dict[str, str]]]:
    """RFC 7517 key set: every trusted key not retired, the next one included."""
    return {"keys": [dict(e.public_jwk) for kid, e in book.added.items() if kid not in book.retired]}


async def rotate_key(
    nc: NATS,
    settings: Settings,
    *,
    now: datetime,
    activate_in: timedelta,
    seen: int | None = None,
    by_root: SigningKey | None = None,
) -> SigningKeyAdded:
    """A new key, published now (stream + JWKS), signing from ``now + activate_in`` on, or
    earlier once every live verifier has it (``ledger.service.keycare``). ``seen``: append only
    if the key events still end there (the state a scheduled rotation was decided on).
    ``by_root``: the operator's root key vouches for it (recovery: no usable key is left)."""
    keys = await follow(nc, settings)
    try:
        current = by_root if by_root is not None else ServiceKeys(keys, settings, None).current(now).key
        new = create_signing_key(settings.keys_path, settings.algorithm, settings.key_passphrase)
        activates = now + activate_in
        jwk = new.public_jwk()
        proof = sign_statement(added_statement(new.kid, new.alg, jwk, activates), current)
        event = SigningKeyAdded(
            event_id=new_event_id(), occurred_at=now, kid=new.kid, alg=new.alg, public_jwk=jwk,
            activates_at=activates, proof=proof,
        )  # fmt: skip
        try:
            await append_key_event(nc, settings, event, keys.seq if seen is None else seen)
        except ConcurrencyConflict:  # another operator or instance rotated first: drop ours
            with contextlib.suppress(OSError):
                (settings.keys_path / f"{new.kid}.pem").unlink()
            raise
        return event
    finally:
        await keys.stop()


async def retire_key(
    nc: NATS, settings: Settings, kid: str, *, now: datetime, immediately: bool
) -> SigningKeyRetired:
    """Retire ``kid``. Without ``immediately`` only once no token it signed can be alive;
    with it (compromise), at once: a new key takes over first if ``kid`` signs now."""
    keys = await follow(nc, settings)
    try:
        book = keys.book
        if kid not in book.added or kid in book.retired:
            raise SessionNotFound(f"no trusted, unretired key {kid}")
        active = book.active(now)
        if active is not None and active.kid == kid:
            if not immediately:
                raise BadRequest(f"{kid} signs now: rotate first, or retire it --now")
            await keys.stop()
            await rotate_key(nc, settings, now=now, activate_in=timedelta(0))
            keys = await follow(nc, settings)
        elif not immediately:
            superseded = keys.book.superseded_at(kid) or now
            safe = superseded + longest_token(settings)
            if now < safe:
                raise BadRequest(f"tokens {kid} signed may live until {safe.isoformat()}: wait, or --now")
        signer = ServiceKeys(keys, settings, None).current(now).key
        reason = "compromise" if immediately else "rotation"
        proof = sign_statement(retired_statement(kid), signer)
        event = SigningKeyRetired(
            event_id=new_event_id(), occurred_at=now, kid=kid, reason=reason, proof=proof
        )
        await append_key_event(nc, settings, event, keys.seq)
        return event
    finally:
        await keys.stop()


KINDS = {SigningKeyAdded: "added", SigningKeyActivated: "activated", SigningKeyRetired: "retired"}


async def append_key_event(nc: NATS, settings: Settings, event: KeyEvent, seen: int) -> None:
    """Append iff no key event landed since ``seen`` (a concurrent step would conflict)."""
    store = EventStore(nc, settings)
    subject = store.subjects.key(event.kid, KINDS[type(event)])
    await store.append(subject, event, expect=(store.subjects.keys_filter(), seen))
