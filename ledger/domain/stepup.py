"""RFC 9470 step-up: does a valid access token meet a required authentication level, and the
``WWW-Authenticate`` challenge when it does not. Pure: the edge sidecar and the gateway both
call it with the claims the one verifier accepted.

``acr`` values are opaque (the ledger never ranks them): a requirement is a set of acceptable
values, as RFC 9470's ``acr_values`` is. ``max_age`` is checked against ``auth_time``; a token
without ``auth_time`` never meets a ``max_age``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ERROR = "insufficient_user_authentication"
# printable ASCII without the quote and the backslash: each value goes into a quoted-string
ACR_VALUE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}", re.ASCII)
MAX_ACR_VALUES = 8
MAX_AGE_LIMIT = 10 * 366 * 86400  # anything larger is a configuration error, not a requirement


class BadRequirement(ValueError):
    """The required level itself is malformed (a proxy or gateway misconfiguration)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    acr_values: tuple[str, ...] = ()  # empty: any level
    max_age: int | None = None  # seconds since auth_time; None: any age

    @property
    def empty(self) -> bool:
        return not self.acr_values and self.max_age is None


NONE = Requirement()


def parse_requirement(acr_values: str | None, max_age: str | None) -> Requirement:
    """From header-style text: ``"aal2 aal3"`` and ``"300"``; blank means no requirement."""
    values = tuple((acr_values or "").split())
    if len(values) > MAX_ACR_VALUES or not all(ACR_VALUE_RE.fullmatch(v) for v in values):
        raise BadRequirement("required acr values must be 1-8 printable tokens without quotes")
    age: int | None = None
    if max_age is not None and max_age.strip():
        text = max_age.strip()
        if not text.isascii() or not text.isdigit() or int(text) > MAX_AGE_LIMIT:
            raise BadRequirement("required max age must be a whole number of seconds")
        age = int(text)
    return Requirement(values, age)


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a token does not meet a requirement; ``challenge`` is the RFC 9470 header value."""

    reason: str  # "acr" or "max_age" (for logs and metrics)
    challenge: str


def shortfall(
    requirement: Requirement, *, acr: str | None, auth_time: int | None, now: float, realm: str | None = None
) -> Shortfall | None:
    """None when the token's ``acr``/``auth_time`` meet ``requirement``; else the challenge.

    The level is checked first: a token at the wrong level is told the level (and the max age
    too, when there is one, so one re-authentication satisfies both)."""
    prefix = f'Bearer realm="{realm}", ' if realm else "Bearer "
    age = f', max_age="{requirement.max_age}"' if requirement.max_age is not None else ""
    if requirement.acr_values and acr not in requirement.acr_values:
        acr_values = " ".join(requirement.acr_values)
        text = f'error="{ERROR}", error_description="A different authentication level is required"'
        return Shortfall("acr", f'{prefix}{text}, acr_values="{acr_values}"{age}')
    if requirement.max_age is not None and (auth_time is None or now - auth_time > requirement.max_age):
        text = f'error="{ERROR}", error_description="More recent authentication is required"'
        levels = f', acr_values="{" ".join(requirement.acr_values)}"' if requirement.acr_values else ""
        return Shortfall("max_age", f"{prefix}{text}{levels}{age}")
    return None
