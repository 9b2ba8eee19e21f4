"""Wire models of the command service: typed requests, typed replies, bounded sizes."""

from __future__ import annotations

import ipaddress
import logging
import traceback
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ledger.domain.device import MAX_LABEL, MAX_USER_AGENT
from ledger.domain.errors import BadRequest, LedgerError, Unavailable
from ledger.domain.events import AuthContext, RevokeReason
from ledger.domain.ids import SID_PATTERN, SUB_MAX, check_sub, is_printable_id

MAX_REQUEST_BYTES = 16 * 1024

# Printable, no whitespace, controls or invisible formatting: safe in logs, headers and subjects (encoded).
Sub = Annotated[str, Field(min_length=1, max_length=SUB_MAX), AfterValidator(check_sub)]
ClientId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/-]+$")]
Scope = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")]
SidField = Annotated[str, Field(pattern=SID_PATTERN)]
# Raw tokens are checked by the token parser, which never echoes them; this only bounds size.
RawToken = Annotated[str, Field(max_length=4096)]


# OpenID Connect acr values are strings or URIs; RFC 8176 amr values are short names.
Acr = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
Amr = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:-]+$")]
IdempotencyKey = Annotated[str, Field(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]


def _check_ip(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError -> bad_request naming the field, never the value
    return value


def _check_label(value: str) -> str:
    if not value.strip() or not is_printable_id(value.replace(" ", "")):
        raise ValueError("label must be printable characters (spaces allowed)")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClientContext(_Model):
    """Who is calling, as the backend or the gateway saw it. Only a minimised form is stored
    (``ledger.domain.device``): never the user agent itself, the IP as configured."""

    user_agent: Annotated[str, Field(max_length=MAX_USER_AGENT)] | None = Field(default=None, repr=False)
    ip: Annotated[str, Field(max_length=45), AfterValidator(_check_ip)] | None = Field(
        default=None, repr=False
    )
    label: Annotated[str, Field(min_length=1, max_length=MAX_LABEL), AfterValidator(_check_label)] | None = (
        None
    )


class StartSessionRequest(_Model):
    sub: Sub
    client_id: ClientId | None = None
    scopes: Annotated[tuple[Scope, ...], Field(max_length=32)] = ()
    acr: Acr | None = None
    amr: Annotated[tuple[Amr, ...], Field(max_length=8)] = ()
    auth_time: AwareDatetime | None = None
    client: ClientContext | None = None
    idempotency_key: IdempotencyKey | None = Field(default=None, repr=False)

    def auth(self) -> AuthContext | None:
        if self.acr is None and not self.amr and self.auth_time is None:
            return None
        return AuthContext(acr=self.acr, amr=self.amr, auth_time=self.auth_time)


class RotateRequest(_Model):
    refresh_token: RawToken = Field(repr=False)
    client: ClientContext | None = None
    # When set, the token must belong to a session of this client (RFC 6749 section 6); else
    # ``invalid_token`` and nothing is appended. The HTTP gateway sets it.
    client_id: ClientId | None = None


class StepUpRequest(_Model):
    """The backend re-authenticated ``sub`` on session ``sid`` (e.g. MFA, RFC 9470)."""

    sid: SidField
    sub: Sub
    acr: Acr
    amr: Annotated[tuple[Amr, ...], Field(max_length=8)] = ()
    auth_time: AwareDatetime | None = None

    def auth(self) -> AuthContext:
        return AuthContext(acr=self.acr, amr=self.amr, auth_time=self.auth_time)


class RevokeOwnSessionRequest(_Model):
    """Self-service: the user of session ``current_sid`` revokes their session ``sid``."""

    sub: Sub
    current_sid: SidField
    sid: SidField


class SignOutOthersRequest(_Model):
    """Self-service: revoke every session of ``sub`` except ``current_sid`` (this device)."""

    sub: Sub
    current_sid: SidField


class RevokeSessionRequest(_Model):
    sid: SidField
    reason: RevokeReason = RevokeReason.LOGOUT


class LogoutRequest(_Model):
    refresh_token: RawToken = Field(repr=False)
    client_id: ClientId | None = None  # as for RotateRequest


class RevokeAccessRequest(_Model):
    """Revoke one access token (its ``jti``) alone: proof of possession, like logout."""

    access_token: Annotated[str, Field(max_length=8192)] = Field(repr=False)
    client_id: ClientId | None = None  # when set, the token must have been issued to this client


class RevokeUserRequest(_Model):
    sub: Sub
    reason: RevokeReason = RevokeReason.ADMIN


class StepUp(_Model):
    """Acknowledgement of a step-up: the family's next access tokens carry ``acr``."""

    seq: int
    sid: str
    acr: str
    amr: tuple[str, ...]
    auth_time: datetime | None


class TokenPair(_Model):
    access_token: str = Field(repr=False)
    refresh_token: str = Field(repr=False)
    token_type: Literal["Bearer"] = "Bearer"
    sid: str
    sub: str
    generation: int
    access_expires_at: AwareDatetime
    refresh_expires_at: AwareDatetime
    session_expires_at: AwareDatetime


class Revocation(_Model):
    """Acknowledgement of a revocation: the stream sequence is its place in the global order."""

    seq: int | None
    already_revoked: bool = False
    sid: str | None = None
    sub: str | None = None
    kept_sid: str | None = None  # "sign out all other devices": the session that stays
    revoked_at: datetime


class ErrorBody(_Model):
    code: str
    message: str


class Reply(_Model):
    ok: bool
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None


M = TypeVar("M", bound=BaseModel)


def parse_request(model: type[M], body: bytes) -> M:
    """Validate a request body; every failure is ``BadRequest`` naming fields, never values."""
    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
        raise BadRequest(f"invalid field(s): {', '.join(fields)}") from None


def ok(result: BaseModel) -> bytes:
    """``Reply(ok=True, result=...)`` on the wire, serialised once (this is the hot path)."""
    return b'{"ok":true,"result":' + result.model_dump_json().encode() + b"}"


def fail(error: LedgerError) -> bytes:
    body = ErrorBody(code=error.code, message=error.message)
    return Reply(ok=False, error=body).model_dump_json(exclude_none=True).encode()


def internal_error(log: logging.Logger, doing: str, exc: BaseException) -> bytes:
    """Log an unexpected failure by type and place only (its text may quote the input, a
    token), and answer ``unavailable``: retrying is safe, nothing is leaked."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    log.error("internal error while %s: %s at %s", doing, type(exc).__name__, where)
    return fail(Unavailable("internal error"))
