"""What an edge verifier knows beyond the keys: revocations folded from notices.

No I/O here: ``Revocations`` is folded from notices by ``consumers.edge.verifier``;
the token itself is judged by ``ledger.domain.access`` (shared with introspection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.contracts.notices import Notice
from ledger.domain.access import AccessClaims, KeyRing, RejectReason, TokenRejected


@dataclass
class Revocations:
    """Revoked sessions, user cut-offs (LEDGER seq, and the session a "sign out all other
    devices" kept) and jtis, each with the epoch second after which no token it concerns
    can be alive (then it is forgotten). Only a user's latest cut matters: a kept session
    was alive when its cut was made, so it had survived every earlier one."""

    sessions: dict[str, float] = field(default_factory=dict)
    users: dict[str, tuple[int, float]] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # sub -> sid kept by the latest cut
    jtis: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    def apply(self, notice: Notice, keys: KeyRing, forget_at: float) -> bool:
        """Fold one notice in; True the first time this event is seen (idempotent)."""
        first = notice.event_id not in self.seen
        self.seen[notice.event_id] = forget_at
        if notice.kind == "session" and notice.sid:
            self.sessions[notice.sid] = max(forget_at, self.sessions.get(notice.sid, 0.0))
        elif notice.kind == "user" and notice.sub:
            self._cut(notice.sub, notice.revoke_seq, notice.keep_sid, forget_at)
        elif notice.kind == "key" and notice.kid:
            keys.retire(notice.kid)
        if notice.jti:
            self.jtis[notice.jti] = max(forget_at, self.jtis.get(notice.jti, 0.0))
        return first

    def _cut(self, sub: str, seq: int, keep_sid: str | None, forget_at: float) -> None:
        cut, until = self.users.get(sub, (0, 0.0))
        if seq > cut:
            self.kept.pop(sub, None)
            if keep_sid is not None:
                self.kept[sub] = keep_sid
        self.users[sub] = (max(cut, seq), max(until, forget_at))

    def check(self, claims: AccessClaims) -> None:
        """O(1): a few dictionary lookups."""
        if claims.sid in self.sessions:
            raise TokenRejected(RejectReason.SESSION_REVOKED)
        cut = self.users.get(claims.sub)
        if cut is not None and cut[0] > claims.ssq and self.kept.get(claims.sub) != claims.sid:
            raise TokenRejected(RejectReason.USER_REVOKED)
        if claims.jti in self.jtis:
            raise TokenRejected(RejectReason.TOKEN_REVOKED)

    def prune(self, now: float) -> int:
        """Forget what no live token can be concerned by any more."""
        dropped = 0
        for table in (self.sessions, self.jtis, self.seen):
            old = [k for k, until in table.items() if until < now]
            for k in old:
                del table[k]
            dropped += len(old)
        for sub in [s for s, (_, until) in self.users.items() if until < now]:
            del self.users[sub]
            self.kept.pop(sub, None)
            dropped += 1
        return dropped

    def counts(self) -> dict[str, int]:
        return {"sessions": len(self.sessions), "users": len(self.users), "jtis": len(self.jtis)}
