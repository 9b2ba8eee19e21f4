"""session-ledger: event-sourced JWT refresh-token rotation on NATS JetStream."""

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.commands import ClientContext, Revocation, StepUp, TokenPair
from ledger.domain.decide import LimitPolicy, ReusePolicy
from ledger.domain.errors import (
    BadRequest,
    IdempotencyKeyReused,
    LedgerError,
    SessionExpired,
    SessionLimitReached,
    SessionNotFound,
    SessionRevokedError,
    TokenInvalid,
    TokenReused,
    Unavailable,
)

SessionRevoked = SessionRevokedError  # the name before 0.2; the event of that name is another class

__all__ = [
    "BadRequest",
    "ClientContext",
    "IdempotencyKeyReused",
    "LedgerClient",
    "LedgerError",
    "LimitPolicy",
    "ReusePolicy",
    "Revocation",
    "SessionExpired",
    "SessionLimitReached",
    "SessionNotFound",
    "SessionRevoked",
    "SessionRevokedError",
    "Settings",
    "StepUp",
    "TokenInvalid",
    "TokenPair",
    "TokenReused",
    "Unavailable",
]
