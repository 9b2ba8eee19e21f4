"""Generated ledger histories for the sessions projection tests (pure: seeded, no I/O).

The generator follows the ledger's rules (a family starts once, only live families
rotate, reuse and revocation are terminal, a revoke-all kills the user's older
sessions), so the events are the kind the ledger appends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ledger.contracts.subjects import Subjects
from ledger.domain.events import (
    AuthContext,
    DeviceInfo,
    Event,
    RecordedEvent,
    ReuseDetected,
    RevokeReason,
    SessionRevoked,
    SessionStarted,
    SessionSteppedUp,
    SigningKeyAdded,
    SigningKeyRetired,
    TokenRotated,
    UserSessionsRevoked,
)
from ledger.domain.refresh import RefreshToken, TokenKeys

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = {
    SessionStarted: "started",
    TokenRotated: "rotated",
    ReuseDetected: "reuse",
    SessionRevoked: "revoked",
    SessionSteppedUp: "stepup",
}
DEVICES = (
    None,
    DeviceInfo(device_class="mobile", ua_family="Safari on iOS", label="phone", ip_hint="192.0.2.0/24"),
)


@dataclass
class _Live:
    sub: str
    token: RefreshToken
    index: int
    issued_at: datetime = T0
    auth: AuthContext | None = None  # raised by a step-up: carried by every later rotation


@dataclass
class Generator:
    rng: random.Random
    keys: TokenKeys
    users: int = 12
    subjects: Subjects = field(default_factory=Subjects)
    now: datetime = T0
    events: list[tuple[str, Event]] = field(default_factory=list)
    live: dict[str, _Live] = field(default_factory=dict)
    kids: list[str] = field(default_factory=list)

    def _id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _tick(self) -> datetime:
        self.now += timedelta(seconds=self.rng.randint(0, 90), microseconds=self.rng.randint(0, 999_999))
        return self.now

    def _add(self, subject: str, event: Event) -> None:
        self.events.append((subject, event))

    def step(self) -> None:
        roll = self.rng.random()
        if not self.live or roll < 0.25:
            self.start()
        elif roll < 0.70:
            self.rotate()
        elif roll < 0.78:
            self.reuse()
        elif roll < 0.90:
            self.revoke()
        elif roll < 0.96:
            self.revoke_user()
        elif roll < 0.975:
            self.key_event()
        elif roll < 0.99:
            self.step_up()
        else:
            self.sign_out_others()

    def start(self) -> None:
        sid = "".join(self.rng.choice(ALPHABET) for _ in range(22))
        sub = f"user-{self.rng.randrange(self.users)}"
        token = self.keys.first(sid, self.rng.randbytes(32))
        event = SessionStarted(
            event_id=self._id(),
            occurred_at=self._tick(),
            sid=sid,
            generation=0,
            token_hash=self.keys.hash(token),
            sub=sub,
            client_id=self.rng.choice([None, "web", "ios", "android"]),
            scopes=tuple(self.rng.sample(["read", "write", "admin", "email"], self.rng.randint(0, 3))),
            idle_ttl_s=self.rng.choice([3600, 86400, 7 * 86400]),
            absolute_ttl_s=30 * 86400,
        )
        self.live[sid] = _Live(sub, token, len(self.events), issued_at=self.now)
        self._add(self.subjects.family_event(sid, "started"), event)

    def _pick(self) -> tuple[str, _Live]:
        sid = self.rng.choice(sorted(self.live))
        return sid, self.live[sid]

    def rotate(self) -> None:
        sid, fam = self._pick()
        fam.token = self.keys.successor(fam.token)
        event = TokenRotated(
            event_id=self._id(),
            occurred_at=self._tick(),
            sid=sid,
            generation=fam.token.generation,
            token_hash=self.keys.hash(fam.token),
            auth=fam.auth,
            device=self.rng.choice(DEVICES),
        )
        fam.issued_at = self.now
        self._add(self.subjects.family_event(sid, "rotated"), event)

    def step_up(self) -> None:
        sid, fam = self._pick()
        fam.auth = AuthContext(acr=f"aal{self.rng.randint(2, 3)}", amr=("pwd", "otp"))
        event = SessionSteppedUp(
            event_id=self._id(),
            occurred_at=self._tick(),
            sid=sid,
            generation=fam.token.generation,
            token_hash=self.keys.hash(fam.token),
            sub=fam.sub,
            auth=fam.auth,
            rotated_at=fam.issued_at,
        )
        self._add(self.subjects.family_event(sid, "stepup"), event)

    def sign_out_others(self) -> None:
        keep, fam = self._pick()
        now = self._tick()
        event = UserSessionsRevoked(
            event_id=self._id(), occurred_at=now, sub=fam.sub, reason=RevokeReason.USER_REQUEST,
            not_before=now, requested_at=now, keep_sid=keep,
        )  # fmt: skip
        self._add(self.subjects.user(fam.sub), event)
        for sid in [s for s, f in self.live.items() if f.sub == fam.sub and s != keep]:
            del self.live[sid]

    def reuse(self) -> None:
        sid, fam = self._pick()
        now, head = self._tick(), fam.token
        common = {
            "sid": sid,
            "generation": head.generation,
            "token_hash": self.keys.hash(head),
            "sub": fam.sub,
        }
        user_policy = self.rng.random() < 0.3
        reuse = ReuseDetected(
            event_id=self._id(),
            occurred_at=now,
            presented_generation=max(0, head.generation - 2),
            policy="user" if user_policy else "family",
            **common,
        )
        self._add(self.subjects.family_event(sid, "reuse"), reuse)
        del self.live[sid]
        if user_policy:
            self._user_revoked(fam.sub, RevokeReason.REUSE, now)
        else:
            revoked = SessionRevoked(
                event_id=self._id(), occurred_at=now, reason=RevokeReason.REUSE, requested_at=now, **common
            )
            self._add(self.subjects.family_event(sid, "revoked"), revoked)

    def revoke(self) -> None:
        sid, fam = self._pick()
        now, head = self._tick(), fam.token
        event = SessionRevoked(
            event_id=self._id(),
            occurred_at=now,
            sid=sid,
            generation=head.generation,
            token_hash=self.keys.hash(head),
            sub=fam.sub,
            reason=self.rng.choice(list(RevokeReason)),
            requested_at=now,
        )
        self._add(self.subjects.family_event(sid, "revoked"), event)
        del self.live[sid]

    def revoke_user(self) -> None:
        self._user_revoked(
            f"user-{self.rng.randrange(self.users)}", RevokeReason.PASSWORD_CHANGE, self._tick()
        )

    def _user_revoked(self, sub: str, reason: RevokeReason, now: datetime) -> None:
        event = UserSessionsRevoked(
            event_id=self._id(), occurred_at=now, sub=sub, reason=reason, not_before=now, requested_at=now
        )
        self._add(self.subjects.user(sub), event)
        for sid in [s for s, f in self.live.items() if f.sub == sub]:
            del self.live[sid]

    def key_event(self) -> None:
        now = self._tick()
        if self.kids and self.rng.random() < 0.4:
            kid = self.kids.pop(0)
            retired = SigningKeyRetired(event_id=self._id(), occurred_at=now, kid=kid)
            self._add(self.subjects.key(kid, "retired"), retired)
            return
        kid = f"k{len(self.events)}"
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": f"{self.rng.getrandbits(128):x}", "kid": kid}
        self.kids.append(kid)
        added = SigningKeyAdded(event_id=self._id(), occurred_at=now, kid=kid, alg="EdDSA", public_jwk=jwk)
        self._add(self.subjects.key(kid, "added"), added)


def generate(
    seed: int, count: int, keys: TokenKeys | None = None, users: int = 12
) -> list[tuple[str, Event]]:
    """About ``count`` events (a step may emit two), deterministic for a seed."""
    rng = random.Random(seed)
    gen = Generator(rng, keys or TokenKeys(rng.randbytes(32)), users=users)
    while len(gen.events) < count:
        gen.step()
    return gen.events[:count]


def recorded(events: list[tuple[str, Event]], first_seq: int = 1) -> list[RecordedEvent]:
    """As the stream would number them when appended in order."""
    return [
        RecordedEvent(event=event, seq=first_seq + i, subject=subject)
        for i, (subject, event) in enumerate(events)
    ]
