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
    SessionRevoked,
    TokenInvalid,
    TokenReused,
    Unavailable,
)

__all__ = [
    "BadRequest",
    "LedgerClient",
    "LedgerError",
    "ReusePolicy",
    "Revocation",
    "SessionExpired",
    "SessionNotFound",
    "SessionRevoked",
    "Settings",
    "TokenInvalid",
    "TokenPair",
    "TokenReused",
    "Unavailable",
]
