"""The same traffic again, under another policy: a recorded trace (``Truth.trace``) sent to a
ledger service that runs the candidate settings, with the simulated clock at each step's time.

This is how a policy dry-run (``report whatif``) is checked: its figures must equal what
this real run answers. Tokens are named logically (session, generation presented); the
client presents the token of that generation if the ledger gave it one in this run, else
the newest one it holds (a client never holds a token it was not given).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import LedgerError, SessionExpired, SessionRevokedError, TokenReused
from session_ledger.sim.simulate import SimClock, simulated_ledger
from session_ledger.sim.truth import Step

FIGURES = (
    "logins", "refreshes", "refreshes_refused_expired", "refreshes_refused_revoked", "sessions_expired_early",
    "sessions_revoked_early", "users_logged_out", "replays", "replays_caught", "replays_missed",
    "replays_refused_ended", "user_cuts_by_reuse", "logouts", "revoke_alls", "differ_from_log",
)  # fmt: skip


class TraceRun:
    def __init__(self, client: LedgerClient, settings: Settings) -> None:
        self.client = client
        self.user_policy = settings.reuse_policy.value == "user"
        self.tokens: dict[int, list[str]] = {}
        self.subs: dict[int, str] = {}
        self.counts: Counter[str] = Counter()
        self.expired: set[int] = set()
        self.revoked: set[int] = set()
        self.users_out: set[str] = set()

    async def step(self, step: Step) -> None:
        if step.kind == "login":
            pair = await self.client.start_session(step.sub, client_id=step.client_id, scopes=("api",))
            self.tokens[step.session], self.subs[step.session] = [pair.refresh_token], step.sub
            self.counts["logins"] += 1
        elif step.kind in ("refresh", "replay"):
            answer = await self._rotate(step)
            getattr(self, f"_{step.kind}")(step, answer)
        elif step.kind == "logout":
            await self.client.logout(self.tokens[step.session][-1])
            self.counts["logouts"] += 1
        else:
            await self.client.revoke_user(step.sub, "password_change")
            self.counts["revoke_alls"] += 1

    async def _rotate(self, step: Step) -> str:
        held = self.tokens[step.session]
        token = held[step.generation] if step.generation < len(held) else held[-1]
        try:
            pair = await self.client.rotate(token)
        except TokenReused:
            return "reused"
        except SessionExpired:
            return "expired"
        except SessionRevokedError:
            return "revoked"
        if pair.generation == len(held):
            held.append(pair.refresh_token)
            return "rotated"
        return "retried"

    def _refresh(self, step: Step, answer: str) -> None:
        self.counts["refreshes"] += 1
        if answer in ("expired", "revoked"):
            self.counts[f"refreshes_refused_{answer}"] += 1
            (self.expired if answer == "expired" else self.revoked).add(step.session)
            self.users_out.add(self.subs[step.session])
        self.counts["differ_from_log"] += answer != "rotated"

    def _replay(self, step: Step, answer: str) -> None:
        self.counts["replays"] += 1
        name = {"reused": "caught", "retried": "missed", "rotated": "missed"}.get(answer, "refused_ended")
        self.counts[f"replays_{name}"] += 1
        self.counts["user_cuts_by_reuse"] += answer == "reused" and self.user_policy
        self.counts["differ_from_log"] += answer != "reused"

    def figures(self) -> dict[str, int]:
        self.counts["sessions_expired_early"] = len(self.expired)
        self.counts["sessions_revoked_early"] = len(self.revoked)
        self.counts["users_logged_out"] = len(self.users_out)
        return {name: self.counts[name] for name in FIGURES}


async def replay_trace(settings: Settings, trace: list[Step], start: datetime) -> dict[str, int]:
    """Send ``trace`` to a ledger running ``settings``; the figures of ``report whatif``."""
    clock = SimClock(start)
    async with simulated_ledger(settings, clock) as client:
        run = TraceRun(client, settings)
        for step in trace:
            clock.now_us = step.t_us
            try:
                await run.step(step)
            except LedgerError as err:
                raise RuntimeError(f"trace step {step} failed: {err.code}") from None
    return run.figures()
