"""The subject space and stream names: the one home of every subject session-ledger uses.

Nothing user-supplied reaches a subject unencoded: a ``sub`` is base64url-encoded into
one token, sids and kids match patterns that exclude ``.``, ``*``, ``>`` and whitespace.

``<p>.ev.s.<sid>.<kind>``        a session family's events (one family = one prefix)
``<p>.ev.u.<sub>.revoked``       user-wide revocations (sub encoded)
``<p>.ev.u.<sub>.admitted``      the per-user session cap's admissions
``<p>.ev.k.<kid>.<kind>``        signing-key lifecycle
``<p>.ev.t.<jti>.revoked``       one access token revoked alone (RFC 7009)
``<p>.cmd.<name>``               commands (request/reply, queue group ``ledger-service``)
``<p>.q.<name>``                 queries (request/reply, the sessions projection)
``<p>.revoked.<kind>.<id>``      revocation notices (stream LEDGER_REVOCATIONS)
``<p>.receipt.<verifier>``       propagation receipts (stream LEDGER_RECEIPTS)
``<p>.analytics.rebuild``        rebuild requests to the running analytics projection
``<p>.heartbeat.broadcast``      the broadcaster's liveness (core NATS, no stream)
``<p>.verifiers.ping``           "which keys do you trust?" to every live verifier (core NATS;
                                 each answers a ``KeyAck``): a new key signs once all have it
``<p>.rate.<scope>.<key>.<win>`` the HTTP gateways' shared rate counters (stream LEDGER_GATEWAY_RATE)
"""

from __future__ import annotations

import base64

from ledger.domain.ids import NAME_RE

EVENTS_STREAM = "LEDGER"  # default; ``Settings.stream`` may rename it
NOTICES_STREAM = "LEDGER_REVOCATIONS"
RECEIPTS_STREAM = "LEDGER_RECEIPTS"
RATE_STREAM = "LEDGER_GATEWAY_RATE"
COMMANDS = (
    "start", "rotate", "revoke", "logout", "revoke_user", "step_up", "revoke_own", "sign_out_others",
    "revoke_access",
)  # fmt: skip
QUERIES = ("sessions", "session", "introspect")


def encode_token(value: str) -> str:
    """Encode an arbitrary string as one subject token: base64url, no padding, never empty."""
    raw = value.encode("utf-8")
    return "_" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str) -> str:
    body = token[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8")


class Subjects:
    """Every subject under one prefix (default ``ledger``)."""

    def __init__(self, prefix: str = "ledger") -> None:
        self.prefix = prefix
        self.events = f"{prefix}.ev.>"
        self.notices = f"{prefix}.revoked.>"
        self.receipts = f"{prefix}.receipt.>"
        self.analytics_rebuild = f"{prefix}.analytics.rebuild"
        self.broadcaster_heartbeat = f"{prefix}.heartbeat.broadcast"
        self.verifiers_ping = f"{prefix}.verifiers.ping"
        self.rate = f"{prefix}.rate.>"

    def rate_counter(self, scope: str, key: str, window: int) -> str:
        """``scope`` and ``key`` are ``[A-Za-z0-9_-]`` (a name and a hash): subject-safe."""
        if not (NAME_RE.fullmatch(scope) and NAME_RE.fullmatch(key)):
            raise ValueError("rate scope and key must be 1-64 characters of [A-Za-z0-9_-]")
        return f"{self.prefix}.rate.{scope}.{key}.{window}"

    def family_event(self, sid: str, kind: str) -> str:
        return f"{self.prefix}.ev.s.{sid}.{kind}"

    def family_filter(self, sid: str) -> str:
        return f"{self.prefix}.ev.s.{sid}.*"

    def user(self, sub: str) -> str:
        return f"{self.prefix}.ev.u.{encode_token(sub)}.revoked"

    def user_admitted(self, sub: str) -> str:
        return f"{self.prefix}.ev.u.{encode_token(sub)}.admitted"

    def user_revocations(self) -> str:
        """Every user's revoke-all (``<p>.ev.u.<sub>.revoked``): the service hears them."""
        return f"{self.prefix}.ev.u.*.revoked"

    def user_of(self, subject: str) -> str | None:
        """The ``sub`` of a user-scoped event subject, or None for any other subject."""
        tokens = subject.split(".")
        prefix_len = self.prefix.count(".") + 1
        if len(tokens) != prefix_len + 4 or tokens[prefix_len : prefix_len + 2] != ["ev", "u"]:
            return None
        try:
            return decode_token(tokens[prefix_len + 2])
        except ValueError:
            return None

    def user_filter(self, sub: str) -> str:
        """Every user-scoped event of ``sub``: the compare-and-set that orders them."""
        return f"{self.prefix}.ev.u.{encode_token(sub)}.*"

    def key(self, kid: str, kind: str) -> str:
        return f"{self.prefix}.ev.k.{kid}.{kind}"

    def access_token(self, jti: str) -> str:
        """``jti`` matches ``NAME_PATTERN`` (checked by the event model): subject-safe."""
        return f"{self.prefix}.ev.t.{jti}.revoked"

    def keys_filter(self) -> str:
        return f"{self.prefix}.ev.k.>"

    def revoking(self) -> list[str]:
        """The event subjects whose events revoke something (the broadcaster's filters)."""
        p = self.prefix
        return [
            f"{p}.ev.s.*.revoked", f"{p}.ev.s.*.reuse", f"{p}.ev.u.*.revoked", f"{p}.ev.k.*.retired",
            f"{p}.ev.t.*.revoked",
        ]  # fmt: skip

    def command(self, name: str) -> str:
        return f"{self.prefix}.cmd.{name}"

    def query(self, name: str) -> str:
        return f"{self.prefix}.q.{name}"

    def notice(self, kind: str, ident: str) -> str:
        """``ident`` is a sid or kid (subject-safe by pattern) or an already encoded sub."""
        return f"{self.prefix}.revoked.{kind}.{ident}"

    def receipt(self, verifier_id: str) -> str:
        if not NAME_RE.fullmatch(verifier_id):
            raise ValueError("verifier id must be 1-64 characters of [A-Za-z0-9_-]")
        return f"{self.prefix}.receipt.{verifier_id}"


def sessions_bucket(stream: str, number: int) -> str:
    """The two KV buckets the sessions projection alternates between (1 and 2) on rebuilds."""
    return f"{stream}_SESSIONS_{number}"


def pointer_bucket(stream: str) -> str:
    """The KV bucket whose key ``sessions`` names the live sessions bucket."""
    return f"{stream}_PROJECTIONS"


def query_subject(prefix: str, name: str) -> str:
    return Subjects(prefix).query(name)


INBOX_ROOT = "_INBOX."
MAX_REPLY_CHARS = 256
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def is_safe_reply(reply: str | None, prefixes: tuple[str, ...] = (INBOX_ROOT,)) -> bool:
    """May a responder publish its answer to ``reply``?

    Only to an inbox: ``_INBOX.`` (or a narrower configured prefix, such as ``_INBOX.app.``)
    followed by plain tokens. A requester choosing ``ledger.ev.…``, ``$KV.…`` or ``$JS.…``
    as its reply subject would otherwise make the responder write there with the
    responder's own permissions (reply-subject injection).
    """
    if not reply or len(reply) > MAX_REPLY_CHARS or not reply.startswith(prefixes):
        return False
    tokens = reply.split(".")
    return len(tokens) >= 2 and all(token and _TOKEN_CHARS.issuperset(token) for token in tokens)
