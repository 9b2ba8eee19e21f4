"""Policy dry-run: the recorded history replayed through the ledger's own decisions under a
candidate policy (grace window, reuse policy, idle and absolute lifetimes).

The log holds what clients asked for, as far as the ledger recorded it: a login
(``SessionStarted``), a refresh presenting generation g-1 (``TokenRotated`` to g), a replay
presenting generation p (``ReuseDetected``), a logout or admin revocation, a revoke-all. Those
requests go, in stream order and at their recorded times, through ``decide.start_session``,
``decide.rotate``, ``decide.revoke_session`` and ``decide.revoke_user`` on families of the
dry-run's own (synthetic tokens under a throwaway key: no ledger secret is needed or read).
The events a decision produced (the revocations a detected replay appended) are outcomes, not
requests, and are left out. The same replay under the recorded policy gives the "actual"
column and must reproduce the log (``mismatches``).

Not in the log, so not replayed: requests the ledger refused (an expired session's refresh)
and retries inside the grace window (a retry appends nothing). A stricter grace window can
therefore only show the replays it would still catch, not the retries it would turn into reuse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.domain import decide
from ledger.domain.decide import Family, Ids, Policy, ReusePolicy
from ledger.domain.errors import LedgerError, SessionExpired, SessionRevokedError
from ledger.domain.events import RevokeReason
from ledger.domain.refresh import RefreshToken, TokenKeys

REPLAY_ANSWERS = {"reused": "caught", "retried": "missed", "rotated": "missed"}  # else: refused_ended
KEYS = TokenKeys(b"session-ledger what-if: not a ledger key".ljust(32, b"."))
IDS = Ids(("0" * 32, "0" * 32))
MAX_GENERATIONS = 1_000_000
FIGURES = (
    "logins", "refreshes", "refreshes_refused_expired", "refreshes_refused_revoked", "sessions_expired_early",
    "sessions_revoked_early", "users_logged_out", "replays", "replays_caught", "replays_missed",
    "replays_refused_ended", "user_cuts_by_reuse", "logouts", "revoke_alls", "differ_from_log",
)  # fmt: skip
EVENT_COLUMNS = (
    "seq", "type", "occurred_at", "sid", "sub", "generation", "presented_generation", "reason", "client_id",
    "idle_ttl_s", "absolute_ttl_s", "policy",
)  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    """A policy to try; None keeps what was recorded."""

    grace: timedelta
    reuse: ReusePolicy
    idle_ttl: timedelta | None = None
    absolute_ttl: timedelta | None = None


@dataclass(frozen=True)
class Request:
    seq: int
    at: datetime
    kind: str  # login | refresh | replay | logout | revoke_all
    sid: str | None
    sub: str | None
    generation: int = 0  # the generation presented (refresh: the new one minus 1)
    reason: str | None = None
    client_id: str | None = None
    idle_ttl_s: int = 0
    absolute_ttl_s: int = 0
    refused: bool = False  # the ledger appended this rotation after a cut, then refused it


def requests_from(rows: Iterable[dict[str, Any]]) -> list[Request]:
    """The clients' requests in the recorded events (stream order); decisions' own events skipped."""
    rows = list(rows)
    detections = {(r["sub"], r["occurred_at"]) for r in rows if r["type"] == "ReuseDetected"}
    starts: dict[str, tuple[int, str]] = {}
    cuts: dict[str, int] = {}
    out: list[Request] = []
    for row in rows:
        if row["type"] == "SessionStarted":
            starts.setdefault(row["sid"], (row["seq"], row["sub"]))
        if row["type"] == "UserSessionsRevoked":
            cuts[row["sub"]] = row["seq"]
        outcome = row["reason"] == RevokeReason.REUSE.value and (row["sub"], row["occurred_at"]) in detections
        request = None if outcome else _request(row)
        if request is not None and request.kind == "refresh" and request.sid in starts:
            start_seq, sub = starts[request.sid]
            refused = cuts.get(sub, 0) > start_seq  # the rule of the post-commit cut check
            request = Request(**{**request.__dict__, "sub": sub, "refused": refused})
        if request is not None:
            out.append(request)
    return out


def _request(row: dict[str, Any]) -> Request | None:
    """A revocation with reason ``reuse`` at a detection's time and user is that decision's own
    event (the caller leaves those out); anything else is a request."""
    kind, at = row["type"], _aware(row["occurred_at"])
    base = {"seq": row["seq"], "at": at, "sid": row["sid"], "sub": row["sub"]}
    if kind == "SessionStarted":
        ttl = {"idle_ttl_s": row["idle_ttl_s"], "absolute_ttl_s": row["absolute_ttl_s"]}
        return Request(kind="login", client_id=row["client_id"], **ttl, **base)
    if kind == "TokenRotated":
        return Request(kind="refresh", generation=row["generation"] - 1, **base)
    if kind == "ReuseDetected":
        return Request(kind="replay", generation=row["presented_generation"], **base)
    if kind == "SessionRevoked":
        return Request(kind="logout", reason=row["reason"], **base)
    if kind == "UserSessionsRevoked":
        return Request(kind="revoke_all", reason=row["reason"], **base)
    return None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass
class DryRun:
    """One replay: the families as the candidate policy would have left them, and the tallies."""

    candidate: Candidate
    families: dict[str, Family] = field(default_factory=dict)
    tokens: dict[str, list[RefreshToken]] = field(default_factory=dict)
    cuts: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    expired: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    users_out: set[str] = field(default_factory=set)

    @property
    def policy(self) -> Policy:
        return Policy(self.candidate.grace, self.candidate.reuse, MAX_GENERATIONS)

    def run(self, requests: Sequence[Request]) -> dict[str, int]:
        for request in requests:
            getattr(self, f"_{request.kind}")(request)
        self.counts["sessions_expired_early"] = len(self.expired)
        self.counts["sessions_revoked_early"] = len(self.revoked)
        self.counts["users_logged_out"] = len(self.users_out)
        return {name: self.counts[name] for name in FIGURES}

    def _login(self, r: Request) -> None:
        assert r.sid is not None and r.sub is not None
        idle = self.candidate.idle_ttl or timedelta(seconds=r.idle_ttl_s)
        absolute = self.candidate.absolute_ttl or timedelta(seconds=r.absolute_ttl_s)
        first = KEYS.first(r.sid, bytes(32))
        event = decide.start_session(
            sid=r.sid, sub=r.sub, client_id=r.client_id, scopes=(), first=first, keys=KEYS,
            idle_ttl=idle, absolute_ttl=absolute, now=r.at, event_id=IDS[0],
        )  # fmt: skip
        self.families[r.sid] = decide.evolve(None, event, r.seq)
        self.tokens[r.sid] = [first]
        self.counts["logins"] += 1

    def _rotate(self, r: Request) -> str:
        """Present the token the client would hold; the decision's name."""
        assert r.sid is not None
        family, held = self.families.get(r.sid), self.tokens.get(r.sid)
        if family is None or not held:
            return "unknown"
        token = held[r.generation] if r.generation < len(held) else held[-1]
        cut = self.cuts.get(family.started.sub)
        try:
            outcome = decide.rotate(
                family, token, user_cut_seq=cut, keys=KEYS, policy=self.policy, now=r.at, ids=IDS
            )
        except SessionExpired:
            return "expired"
        except SessionRevokedError:
            return "revoked"
        except LedgerError:
            return "unknown"
        if isinstance(outcome, decide.Rotated):
            self.families[r.sid] = decide.evolve(family, outcome.events[0], r.seq)
            held.append(outcome.successor)
            return "rotated"
        if isinstance(outcome, decide.Retried):
            return "retried"
        for user_event in outcome.user_events:
            self.cuts[user_event.sub] = r.seq
            self.counts["user_cuts_by_reuse"] += 1
        for event in outcome.family_events:
            self.families[r.sid] = decide.evolve(self.families[r.sid], event, r.seq)
        return "reused"

    def _refresh(self, r: Request) -> None:
        self.counts["refreshes"] += 1
        answer = self._rotate(r)
        if answer in ("expired", "revoked"):
            self.counts[f"refreshes_refused_{answer}"] += 1
            (self.expired if answer == "expired" else self.revoked).add(r.sid or "")
            self.users_out.add(r.sub or "")
        self.counts["differ_from_log"] += (answer == "rotated") == r.refused

    def _replay(self, r: Request) -> None:
        self.counts["replays"] += 1
        answer = self._rotate(r)
        self.counts[f"replays_{REPLAY_ANSWERS.get(answer, 'refused_ended')}"] += 1
        self.counts["differ_from_log"] += answer != "reused"

    def _logout(self, r: Request) -> None:
        family = self.families.get(r.sid or "")
        if family is None:
            return
        reason = RevokeReason(r.reason) if r.reason else RevokeReason.LOGOUT
        event = decide.revoke_session(family, reason=reason, requested_at=r.at, now=r.at, event_id=IDS[0])
        if event is not None:
            self.families[family.started.sid] = decide.evolve(family, event, r.seq)
        self.counts["logouts"] += 1

    def _revoke_all(self, r: Request) -> None:
        self.cuts[r.sub or ""] = r.seq
        self.counts["revoke_alls"] += 1


def dry_run(requests: Sequence[Request], candidate: Candidate) -> dict[str, int]:
    return DryRun(candidate).run(requests)


def compare(requests: Sequence[Request], actual: Candidate, candidate: Candidate) -> list[tuple[Any, ...]]:
    """(figure, actual, candidate, change) rows: both columns from the same replay."""
    before, after = dry_run(requests, actual), dry_run(requests, candidate)
    return [(name, before[name], after[name], after[name] - before[name]) for name in FIGURES]
