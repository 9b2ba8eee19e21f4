"""session-ledger: event-sourced JWT refresh-token rotation on NATS JetStream."""

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import Revocation, TokenPair
from ledger.domain.decide import ReusePolicy
from ledger.domain.errors import (
    BadRequest,
    LedgerError,
    SessionExpired,
    SessionNotFound,
    SessionRevokedError,
    TokenInvalid,
    TokenReused,
    Unavailable,
)

SessionRevoked = SessionRevokedError  # the name before 0.2; the event of that name is another class

__all__ = [
    "BadRequest",
    "LedgerClient",
    "LedgerError",
    "ReusePolicy",
    "Revocation",
    "SessionExpired",
    "SessionNotFound",
    "SessionRevoked",
    "SessionRevokedError",
    "Settings",
    "TokenInvalid",
    "TokenPair",
    "TokenReused",
    "Unavailable",
]
