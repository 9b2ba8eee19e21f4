"""Identifier formats, written once: every model, parser and subject check uses these.

The generators take their randomness from ``secrets``/``os.urandom``; the pure decision
functions never call them (ids are passed in), the service does.
"""

from __future__ import annotations

import os
import re
import secrets
import unicodedata

SID_PATTERN = r"^[A-Za-z0-9_-]{22}$"  # 128 random bits, base64url
KID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
GENERATED_KID_PATTERN = r"^[A-Za-z0-9_-]{16}$"  # what the service names its keys: 96 bits, base64url
EVENT_ID_PATTERN = r"^[0-9a-f]{32}$"
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # verifier ids, NATS user names

SID_RE = re.compile(SID_PATTERN)
GENERATED_KID_RE = re.compile(GENERATED_KID_PATTERN)
KID_RE = re.compile(KID_PATTERN)
NAME_RE = re.compile(NAME_PATTERN)
SUB_MAX = 255


def new_sid() -> str:
    return secrets.token_urlsafe(16)


def new_event_id() -> str:
    """128 random bits as 32 hex characters (``uuid4().hex`` cost three times as much)."""
    return os.urandom(16).hex()


def is_sid(value: str) -> bool:
    return bool(SID_RE.fullmatch(value))


def is_generated_id(value: str) -> bool:
    """A session id or a key id the service made: random base64url, so it may begin with ``-``."""
    return bool(SID_RE.fullmatch(value) or GENERATED_KID_RE.fullmatch(value))


# Unicode categories a user id may not contain: controls (C0, DEL, C1), format characters
# (zero-width, bidi overrides, BOM), surrogates, private use, unassigned, separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def is_printable_id(value: str) -> bool:
    """True when every character is visible: safe in logs, headers, terminals and reports."""
    return all(unicodedata.category(ch) not in _UNPRINTABLE for ch in value)


def check_sub(value: str) -> str:
    """Pydantic after-validator for a user id (``sub``): printable characters only."""
    if not is_printable_id(value):
        raise ValueError("sub must be printable characters without controls or invisible formatting")
    return value
