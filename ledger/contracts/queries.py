"""Wire models of the query side (``ledger.q.*``): what ``LedgerClient`` returns.

Kept free of I/O and of the projection internals so the client can import them cheaply.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ledger.contracts.commands import SidField, Sub
from ledger.domain.events import DeviceInfo

MAX_INTROSPECT_CHARS = 8192  # larger than any token the ledger issues


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListSessionsRequest(_Model):
    sub: Sub
    include_inactive: bool = False
    current_sid: SidField | None = None  # the asking device's session: marked ``current``


class GetSessionRequest(_Model):
    sid: SidField


class IntrospectRequest(_Model):
    token: Annotated[str, Field(max_length=MAX_INTROSPECT_CHARS)] = Field(repr=False)
    token_type_hint: Literal["refresh_token", "access_token"] | None = None


class SessionView(_Model):
    """One session as a person or a service sees it; ``status`` is evaluated at ``as_of``."""

    sid: str
    sub: str
    client_id: str | None
    scopes: tuple[str, ...]
    status: Literal["active", "expired", "revoked"]
    active: bool
    generation: int
    rotations: int
    started_at: datetime
    last_rotated_at: datetime | None
    idle_expires_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    start_seq: int
    head_seq: int
    as_of: datetime
    last_seen_at: datetime | None = None  # the last rotation (else the start): read from the log
    device: DeviceInfo | None = None  # minimised: device class, "browser on OS", label, IP hint
    acr: str | None = None  # the family's authentication level now (raised by a step-up)
    current: bool = False  # the session of the device that asked ("this device")


class SessionList(_Model):
    sub: str
    sessions: tuple[SessionView, ...]
    as_of: datetime


class Introspection(_Model):
    """RFC 7662 response: ``active`` plus claims; an inactive token gets ``active`` only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    active: bool
    token_type: Literal["refresh_token", "access_token"] | None = None
    scope: str | None = None
    client_id: str | None = None
    sub: str | None = None
    sid: str | None = None
    iss: str | None = None
    aud: str | None = None
    exp: int | None = None
    iat: int | None = None
    nbf: int | None = None
    jti: str | None = None
    generation: int | None = None
    # RFC 9470 section 6.2: the access token's authentication level and time, so that a resource
    # server (and the gateway's self-service) can answer a step-up challenge
    acr: str | None = None
    auth_time: int | None = None

    def wire(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)


INACTIVE = Introspection(active=False)
