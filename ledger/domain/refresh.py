"""Opaque refresh tokens: ``rt1.<sid>.<generation>.<secret>``.

Generation 0's secret is random (256 bits). Every successor's secret is an HMAC of
its predecessor under a server-held key, which buys two things:

* idempotent rotation: a retry or a second tab gets the *same* successor;
* genuineness without history: a presented token of generation k is genuine iff
  deriving forward to the head's generation reproduces the head's hash.

Only a keyed hash of a token ever leaves this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

from ledger.domain.errors import TokenInvalid
from ledger.domain.ids import SID_PATTERN

PREFIX = "rt1"
MAX_TOKEN_LEN = 128
SECRET_BYTES = 32
_TOKEN_RE = re.compile(
    rf"^rt1\.(?P<sid>{SID_PATTERN[1:-1]})\.(?P<gen>0|[1-9][0-9]{{0,8}})\.(?P<secret>[A-Za-z0-9_-]{{43}})$"
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class RefreshToken:
    sid: str
    generation: int
    secret: bytes

    def __str__(self) -> str:
        return f"{PREFIX}.{self.sid}.{self.generation}.{_b64(self.secret)}"

    def __repr__(self) -> str:  # never print the secret
        return f"RefreshToken(sid={self.sid!r}, generation={self.generation})"


def parse(token: object) -> RefreshToken:
    """Parse strictly; any deviation is ``TokenInvalid`` with no echo of the input."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN:
        raise TokenInvalid("malformed refresh token")
    m = _TOKEN_RE.fullmatch(token)
    if m is None:
        raise TokenInvalid("malformed refresh token")
    secret = _unb64(m["secret"])
    if len(secret) != SECRET_BYTES or _b64(secret) != m["secret"]:
        raise TokenInvalid("malformed refresh token")  # non-canonical encoding
    return RefreshToken(m["sid"], int(m["gen"]), secret)


class TokenKeys:
    """Server-held keys derived from one master secret (shared by all service instances)."""

    def __init__(self, master: bytes) -> None:
        if len(master) < 32:
            raise ValueError("master secret must be at least 32 bytes")
        self._rotate = hmac.digest(master, b"session-ledger/rotate/v1", hashlib.sha256)
        self._hash = hmac.digest(master, b"session-ledger/hash/v1", hashlib.sha256)
        self._idempotent = hmac.digest(master, b"session-ledger/idempotent-start/v1", hashlib.sha256)
        self.ip_key = hmac.digest(master, b"session-ledger/client-ip/v1", hashlib.sha256)

    def first(self, sid: str, random32: bytes) -> RefreshToken:
        if len(random32) != SECRET_BYTES:
            raise ValueError("generation 0 needs 32 random bytes")
        return RefreshToken(sid, 0, random32)

    def idempotent_first(self, sub: str, idempotency_key: str) -> RefreshToken:
        """Generation 0 of the session a start with this key creates: its sid and secret are
        derived from (sub, key), so a retried start lands on the same family (the append's
        compare-and-set decides) and answers the same token. Unpredictable without the master."""
        seed = hmac.digest(self._idempotent, f"{len(sub)}:{sub}:{idempotency_key}".encode(), hashlib.sha256)
        sid = _b64(seed[:16])
        secret = hmac.digest(self._idempotent, b"secret:" + seed, hashlib.sha256)
        return RefreshToken(sid, 0, secret)

    def successor(self, token: RefreshToken) -> RefreshToken:
        msg = f"{token.sid}.{token.generation}.".encode() + token.secret
        return RefreshToken(token.sid, token.generation + 1, hmac.digest(self._rotate, msg, hashlib.sha256))

    def hash(self, token: RefreshToken) -> str:
        return hmac.new(self._hash, str(token).encode(), hashlib.sha256).hexdigest()

    def matches(self, token: RefreshToken, generation: int, token_hash: str) -> bool:
        """True iff ``token`` is the family's token of ``generation`` (constant-time compare)."""
        return token.generation == generation and hmac.compare_digest(self.hash(token), token_hash)

    def is_ancestor(self, token: RefreshToken, head_generation: int, head_hash: str, max_steps: int) -> bool:
        """True iff deriving forward from ``token`` reaches the head: the token was issued."""
        steps = head_generation - token.generation
        if steps < 0 or steps > max_steps:
            return False
        current = token
        for _ in range(steps):
            current = self.successor(current)
        return hmac.compare_digest(self.hash(current), head_hash)
