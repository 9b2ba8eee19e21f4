"""Identifiers and the subject space. Nothing user-supplied reaches a subject unencoded."""

from __future__ import annotations

import base64
import re
import secrets
import uuid

SID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")  # 128 random bits, base64url
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SUB_MAX = 255


def new_sid() -> str:
    return secrets.token_urlsafe(16)


def new_event_id() -> str:
    return uuid.uuid4().hex


def is_sid(value: str) -> bool:
    return bool(SID_RE.fullmatch(value))


def encode_token(value: str) -> str:
    """Encode an arbitrary string as one subject token: base64url, no padding, never empty."""
    raw = value.encode("utf-8")
    return "_" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str) -> str:
    body = token[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")


class Subjects:
    """The ledger's subjects under one prefix (default ``ledger``).

    ``<p>.ev.s.<sid>.<kind>``   a session family's events (one family = one prefix)
    ``<p>.ev.u.<sub>.revoked``  user-wide revocations (sub encoded)
    ``<p>.ev.k.<kid>.<kind>``   signing-key lifecycle
    ``<p>.cmd.<name>``          commands (request/reply, queue group)
    """

    def __init__(self, prefix: str = "ledger") -> None:
        self.prefix = prefix
        self.events = f"{prefix}.ev.>"

    def family(self, sid: str, kind: str) -> str:
        return f"{self.prefix}.ev.s.{sid}.{kind}"

    def family_filter(self, sid: str) -> str:
        return f"{self.prefix}.ev.s.{sid}.*"

    def user(self, sub: str) -> str:
        return f"{self.prefix}.ev.u.{encode_token(sub)}.revoked"

    def key(self, kid: str, kind: str) -> str:
        return f"{self.prefix}.ev.k.{kid}.{kind}"

    def keys_filter(self) -> str:
        return f"{self.prefix}.ev.k.>"

    def command(self, name: str) -> str:
        return f"{self.prefix}.cmd.{name}"
