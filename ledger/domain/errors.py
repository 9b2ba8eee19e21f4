"""One error tree for the ledger: each error has a stable ``code`` for the wire."""

from __future__ import annotations

from typing import ClassVar


class LedgerError(Exception):
    """Base of every error the ledger reports; ``code`` is stable and machine-readable."""

    code: ClassVar[str] = "ledger_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class TokenInvalid(LedgerError):
    """Malformed, forged or unknown token. Deliberately says nothing more."""

    code = "invalid_token"


class TokenReused(LedgerError):
    """A superseded refresh token was presented: the family (or user) is now revoked."""

    code = "token_reused"


class SessionRevokedError(LedgerError):
    code = "session_revoked"


class SessionExpired(LedgerError):
    code = "session_expired"


class SessionNotFound(LedgerError):
    code = "not_found"


class BadRequest(LedgerError):
    """Input failed validation (size, characters, types)."""

    code = "bad_request"


class Unavailable(LedgerError):
    """The ledger could not answer now (NATS down, election, timeout); safe to retry."""

    code = "unavailable"


class SessionLimitReached(LedgerError):
    """The user already has the maximum number of sessions (session cap, policy ``refuse``)."""

    code = "session_limit"


class IdempotencyKeyReused(LedgerError):
    """A start's idempotency key belongs to a session that differs or has moved on."""

    code = "idempotency_key_reused"


class ConcurrencyConflict(LedgerError):
    """Another writer extended the same family first (JetStream err_code 10071)."""

    code = "conflict"

    def __init__(self, subject: str, expected: int) -> None:
        super().__init__(f"wrong last sequence for {subject}: expected {expected}")
        self.subject = subject
        self.expected = expected


class ConfigError(LedgerError):
    """Unsafe or invalid configuration, refused at start-up."""

    code = "config_error"


ERRORS_BY_CODE: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        TokenInvalid,
        TokenReused,
        SessionRevokedError,
        SessionExpired,
        SessionNotFound,
        BadRequest,
        Unavailable,
        ConcurrencyConflict,
        ConfigError,
        SessionLimitReached,
        IdempotencyKeyReused,
    )
}


def error_from_code(code: str, message: str) -> LedgerError:
    """Rebuild a typed error from its wire form (unknown codes become ``LedgerError``)."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None or cls is ConcurrencyConflict:
        err = LedgerError(message)
        return err
    return cls(message)
