"""The simulator's model of what it did: sessions, their ends, and the ground truth summary.

Times are integer microseconds since the simulation's start, so the model's expiry
arithmetic is exactly the ledger's (``occurred_at + idle_ttl_s``), never off by a float.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

US = 1_000_000


@dataclass(frozen=True)
class SimConfig:
    users: int = 20
    minutes: float = 30.0
    replay_rate: float = 0.1  # share of sessions whose refresh token an attacker steals and replays
    seed: int = 1
    idle_ttl_s: int = 300
    absolute_ttl_s: int = 3600
    refresh_every_s: tuple[float, float] = (45.0, 75.0)
    idle_gap_s: tuple[float, float] = (60.0, 720.0)
    idle_prob: float = 0.08
    logout_prob: float = 0.03
    relogin_gap_s: tuple[float, float] = (20.0, 300.0)
    password_change_prob: float = 0.15  # per user, once, at a random time
    second_device_prob: float = 0.3
    max_actions: int = 200_000
    max_wall_s: float = 120.0


@dataclass
class SimSession:
    sid: str
    sub: str
    client_id: str
    start_us: int
    tokens: list[str] = field(repr=False)
    last_activity_us: int = 0
    index: int = -1  # position in Truth.sessions (the trace names sessions by it)
    last_rotation_us: int | None = None
    rotations: int = 0
    end_us: int | None = None
    end_kind: str | None = None

    def expires_us(self, cfg: SimConfig) -> int:
        return min(self.last_activity_us + cfg.idle_ttl_s * US, self.start_us + cfg.absolute_ttl_s * US)

    def expiry_kind(self, cfg: SimConfig) -> str:
        absolute = self.start_us + cfg.absolute_ttl_s * US
        return "absolute_expired" if self.expires_us(cfg) == absolute else "idle_expired"

    def settle(self, now_us: int, cfg: SimConfig) -> None:
        """If it expired before ``now``, it ended then (whenever somebody notices)."""
        if self.end_us is None and now_us >= self.expires_us(cfg):
            self.end_us, self.end_kind = self.expires_us(cfg), self.expiry_kind(cfg)

    def alive(self, now_us: int, cfg: SimConfig) -> bool:
        self.settle(now_us, cfg)
        return self.end_us is None


@dataclass
class Device:
    sub: str
    client_id: str
    session: SimSession | None = None


@dataclass(frozen=True)
class Step:
    """One request the ledger recorded, in logical terms (session index, generation presented),
    so the same traffic can be sent again to a ledger under another policy (``sim.trace``)."""

    t_us: int
    kind: str  # login | refresh | replay | logout | revoke_all
    session: int = -1
    generation: int = 0
    sub: str = ""
    client_id: str = ""


@dataclass
class Truth:
    since: datetime
    until: datetime
    sessions: list[SimSession] = field(default_factory=list)
    replays: list[tuple[str, str, int]] = field(default_factory=list)  # sub, client, behind
    logouts: int = 0
    password_changes: int = 0
    refused_refreshes: int = 0
    model_mismatches: int = 0
    actions: int = 0
    truncated: bool = False
    trace: list[Step] = field(default_factory=list)

    def summary(self, cfg: SimConfig) -> dict[str, Any]:
        end_us = us_of(self.until - self.since)
        for s in self.sessions:
            s.settle(end_us, cfg)
        ended = Counter(s.end_kind for s in self.sessions if s.end_kind is not None)
        issued = sum(s.rotations + 1 for s in self.sessions)
        expired = ended["idle_expired"] + ended["absolute_expired"]
        durations = [((s.end_us or end_us) - s.start_us, s.end_us is not None) for s in self.sessions]
        by_user = Counter(sub for sub, _, _ in self.replays)
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "users": cfg.users,
            "seed": cfg.seed,
            "sessions_started": len(self.sessions),
            "sessions_ended": dict(sorted(ended.items())),
            "sessions_active": sum(1 for s in self.sessions if s.end_us is None),
            "rotations": sum(s.rotations for s in self.sessions),
            "logouts": self.logouts,
            "password_changes": self.password_changes,
            "replays_injected": len(self.replays),
            "replay_users": dict(sorted(by_user.items())),
            "replay_clients": dict(sorted(Counter(c for _, c, _ in self.replays).items())),
            "repeat_offenders": sum(1 for n in by_user.values() if n > 1),
            "tokens_issued": issued,
            "tokens_expired_unused": expired,
            "expiration_rate": expired / issued if issued else None,
            "duration_quantiles_s": km_quantiles([(d / US, died) for d, died in durations]),
            "session_days": sum(d for d, _ in durations) / (86_400 * US),
            "ledger_events_expected": len(self.sessions)
            + sum(s.rotations for s in self.sessions)
            + self.logouts
            + self.password_changes
            + 2 * len(self.replays),
            "refused_refreshes": self.refused_refreshes,
            "actions": self.actions,
            "model_mismatches": self.model_mismatches,
            "truncated": self.truncated,
        }


def km_quantiles(
    durations: list[tuple[float, bool]], ps: tuple[float, ...] = (0.5, 0.9, 0.99)
) -> dict[str, float | None]:
    """Kaplan-Meier quantiles: (duration, ended) pairs; censored ones stay in the risk set."""
    out: dict[str, float | None] = {f"p{round(p * 100)}": None for p in ps}
    at_risk, survival = len(durations), 1.0
    by_d = Counter(d for d, _ in durations)
    deaths = Counter(d for d, died in durations if died)
    for d in sorted(by_d):
        if deaths[d]:
            survival *= 1 - deaths[d] / at_risk
            for p in ps:
                key = f"p{round(p * 100)}"
                if out[key] is None and survival <= 1 - p + 1e-12:
                    out[key] = d
        at_risk -= by_d[d]
    return out


def us_of(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * US + delta.microseconds
