"""Key events a verifier can authenticate: each is a statement signed by a key it trusts.

A ``SigningKeyAdded`` carries ``proof``: a compact JWS, by an already trusted key, over the
canonical statement of the new key (kid, alg, public JWK, activation time). The first key of
a ledger is trusted on first use (no proof) unless the verifier is configured with the
operator's root public key: then every key event, the first included, needs a proof by the
root or by a key already trusted. A key event forged into the stream (only a writer with the
ledger's own permissions could) therefore changes nothing at any verifier: it cannot add a
key that mints tokens.

Lifecycle (``KeyBook``): added (published, verifying) -> active (signs) when every live
verifier acknowledged it (``SigningKeyActivated``) or at ``activates_at``, whichever first ->
superseded (verifies only) when a newer key is active -> retired once the longest access
token it signed has expired (or at once, on compromise).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import jwt

from ledger.domain.events import KeyEvent, SigningKeyActivated, SigningKeyAdded


def added_statement(kid: str, alg: str, jwk: dict[str, str], activates_at: datetime | None) -> bytes:
    when = None if activates_at is None else activates_at.isoformat()
    body = {"action": "add", "kid": kid, "alg": alg, "jwk": jwk, "activates_at": when}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def retired_statement(kid: str) -> bytes:
    return json.dumps({"action": "retire", "kid": kid}, sort_keys=True, separators=(",", ":")).encode()


def activated_statement(kid: str) -> bytes:
    return json.dumps({"action": "activate", "kid": kid}, sort_keys=True, separators=(",", ":")).encode()


def statement_of(event: KeyEvent) -> bytes:
    if isinstance(event, SigningKeyAdded):
        return added_statement(event.kid, event.alg, event.public_jwk, event.activates_at)
    if isinstance(event, SigningKeyActivated):
        return activated_statement(event.kid)
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
    acknowledged: dict[str, datetime] = field(default_factory=dict)  # kid -> SigningKeyActivated time

    def apply(self, event: KeyEvent) -> None:
        """Fold one key event the caller already authenticated (``KeyRing``)."""
        if isinstance(event, SigningKeyAdded):
            self.added.setdefault(event.kid, event)
        elif isinstance(event, SigningKeyActivated):
            self.acknowledged.setdefault(event.kid, event.occurred_at)
        else:
            self.retired.add(event.kid)

    def activation(self, kid: str) -> datetime:
        """When ``kid`` signs from: its acknowledgement or its deadline, whichever first."""
        e = self.added[kid]
        times = [t for t in (e.activates_at, self.acknowledged.get(kid)) if t is not None]
        return min(times) if times else e.occurred_at

    def activated(self, now: datetime) -> list[SigningKeyAdded]:
        """Trusted, unretired keys whose activation has come, newest first: the first one
        signs (an instance without its private key falls back to the next)."""
        live = [e for kid, e in self.added.items() if kid not in self.retired]
        return [e for e in live if self.activation(e.kid) <= now][::-1]

    def active(self, now: datetime) -> SigningKeyAdded | None:
        ready = self.activated(now)
        return ready[0] if ready else None

    def superseded_at(self, kid: str) -> datetime | None:
        """When the next newer key took over from ``kid`` (None: nothing newer is active yet)."""
        kids = list(self.added)
        if kid not in kids:
            return None
        times = [self.activation(k) for k in kids[kids.index(kid) + 1 :] if k not in self.retired]
        return min(times) if times else None

    def pending(self, now: datetime) -> list[SigningKeyAdded]:
        """Published, not yet signing (waiting for acknowledgements or their deadline)."""
        return [e for kid, e in self.added.items() if kid not in self.retired and self.activation(kid) > now]

    def retirable(self, now: datetime, longest_token: timedelta) -> list[str]:
        """Superseded keys no living token can carry any more: retire them (automatically)."""
        out = []
        for kid in self.added:
            superseded = self.superseded_at(kid)
            if kid not in self.retired and superseded is not None and superseded + longest_token <= now:
                out.append(kid)
        return out

    def rotation_due(self, now: datetime, every: timedelta | None) -> bool:
        """Scheduled rotation: the active key has signed for ``every`` and no key is pending."""
        active = self.active(now)
        if every is None or active is None or self.pending(now):
            return False
        return self.activation(active.kid) + every <= now
