"""Key events a verifier can authenticate: each is a statement signed by a key it trusts.

A ``SigningKeyAdded`` carries ``proof``: a compact JWS, by an already trusted key, over the
canonical statement of the new key (kid, alg, public JWK, activation time). The first key of
a ledger is trusted on first use (no proof). A key event forged into the stream (only a
writer with the ledger's own permissions could) therefore changes nothing at any verifier:
it cannot add a key that mints tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import jwt

from ledger.domain.events import SigningKeyAdded, SigningKeyRetired


def added_statement(kid: str, alg: str, jwk: dict[str, str], activates_at: datetime | None) -> bytes:
    when = None if activates_at is None else activates_at.isoformat()
    body = {"action": "add", "kid": kid, "alg": alg, "jwk": jwk, "activates_at": when}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def retired_statement(kid: str) -> bytes:
    return json.dumps({"action": "retire", "kid": kid}, sort_keys=True, separators=(",", ":")).encode()


def statement_of(event: SigningKeyAdded | SigningKeyRetired) -> bytes:
    if isinstance(event, SigningKeyAdded):
        return added_statement(event.kid, event.alg, event.public_jwk, event.activates_at)
    return retired_statement(event.kid)


def proof_kid(proof: str) -> str | None:
    """The authorising key named in a proof's header (not yet verified)."""
    try:
        kid = jwt.get_unverified_header(proof).get("kid")
    except jwt.PyJWTError:
        return None
    return kid if isinstance(kid, str) else None


@dataclass
class KeyBook:
    """The signing keys as the ledger's key events say, trusted ones only, in stream order.

    Pure: ``apply`` folds one key event; ``trust`` decides whether its proof is good
    (``ledger.domain.access.KeyRing.authorizes`` does the signature check).
    """

    added: dict[str, SigningKeyAdded] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)

    def activated(self, now: datetime) -> list[SigningKeyAdded]:
        """Trusted, unretired keys whose activation time has come, newest first: the first
        one signs (an instance without its private key falls back to the next)."""
        ready = [
            e for kid, e in self.added.items()
            if kid not in self.retired and (e.activates_at is None or e.activates_at <= now)
        ]  # fmt: skip
        return ready[::-1]

    def active(self, now: datetime) -> SigningKeyAdded | None:
        ready = self.activated(now)
        return ready[0] if ready else None

    def superseded_at(self, kid: str) -> datetime | None:
        """When the next newer key took over from ``kid`` (None: nothing newer is active yet)."""
        kids = list(self.added)
        if kid not in kids:
            return None
        newer = [self.added[k] for k in kids[kids.index(kid) + 1 :] if k not in self.retired]
        times = [e.activates_at or e.occurred_at for e in newer]
        return min(times) if times else None

    def pending(self, now: datetime) -> list[SigningKeyAdded]:
        return [e for e in self.added.values() if e.activates_at is not None and e.activates_at > now]
