"""Traffic simulator: drives the real ledger (LedgerClient -> service -> JetStream) with a
seeded RNG and a simulated clock, and reports the ground truth it injected.

The service runs in this process with a controllable clock and listens on a private
command prefix (so a running ``session-ledger up`` never answers the simulator's
requests with the wall clock); its events go to the ordinary ``LEDGER`` stream.
Minutes of behaviour therefore take seconds. Every ledger answer is checked against
the simulator's own model; ``model_mismatches`` counts disagreements (expected 0),
so the printed truth is what the simulator did, confirmed by what the ledger said.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.msg import Msg

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.contracts.subjects import Subjects, is_safe_reply
from ledger.domain.errors import LedgerError, SessionExpired, SessionRevokedError, TokenReused
from ledger.service.app import build_service, command_routes, handle
from ledger.streaming.connection import connect, flush_to_server
from ledger.streaming.store import EventStore
from session_ledger.sim.synthetic import CLIENTS, synthetic_events
from session_ledger.sim.truth import US, Device, SimConfig, SimSession, Step, Truth, km_quantiles, us_of

__all__ = ["SimConfig", "Truth", "km_quantiles", "simulate", "simulated_ledger", "synthetic_events"]


class SimClock:
    def __init__(self, start: datetime) -> None:
        self.start = start
        self.now_us = 0

    def __call__(self) -> datetime:
        return self.start + timedelta(microseconds=self.now_us)


@contextlib.asynccontextmanager
async def simulated_ledger(settings: Settings, clock: Callable[[], datetime]) -> AsyncIterator[LedgerClient]:
    """An in-process ledger service on a private command prefix, with ``clock``; yields its client."""
    prefix = (
        f"{settings.subject_prefix}.sim.{secrets.token_hex(4)}"  # nats.conf: the ledger user may serve it
    )
    nc = await connect(settings.nats_url, "ledger-simulator-service")
    try:
        service = await build_service(settings, nc, clock=clock)
        subjects = Subjects(prefix)
        for name, model, call in command_routes(service):  # the service's own command table
            await nc.subscribe(subjects.command(name), cb=_responder(model, call))
        await flush_to_server(nc)  # the client below is another connection: its first command needs them
        client = await LedgerClient.connect(settings.nats_url, prefix=prefix, timeout=10.0)
        try:
            yield client
        finally:
            await client.close()
    finally:
        await nc.drain()


def _responder(model: Any, call: Any) -> Callable[[Msg], Any]:
    async def respond(msg: Msg) -> None:
        if is_safe_reply(msg.reply):  # the service's rule: answers go to inboxes only
            await msg.respond(await handle(model, call, msg.data))

    return respond


def sim_settings(settings: Settings, cfg: SimConfig) -> Settings:
    return settings.model_copy(
        update={
            "refresh_idle_ttl": timedelta(seconds=cfg.idle_ttl_s),
            "session_absolute_ttl": timedelta(seconds=cfg.absolute_ttl_s),
            "access_ttl": timedelta(seconds=60),
        }
    )


async def start_time(settings: Settings) -> datetime:
    """After the newest event in the ledger, so ``--since/--until`` isolate this run."""
    nc = await connect(settings.nats_url, "ledger-simulator")
    try:
        store = EventStore(nc, settings)
        await store.ensure_stream()
        last = await store.last(store.subjects.events)
    finally:
        await nc.drain()
    now = datetime.now(UTC).replace(microsecond=0)
    if last is None:
        return now
    after = last.event.occurred_at.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    return max(now, after)


class Simulator:
    """Discrete-event simulation: one pending action per device, attacks and password changes."""

    def __init__(
        self,
        cfg: SimConfig,
        client: LedgerClient,
        clock: SimClock,
        grace: timedelta,
        *,
        user_policy: bool = False,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.clock = clock
        self.rng = random.Random(cfg.seed)
        self.run_tag = f"{cfg.seed}"
        self.queue: list[tuple[int, int, str, Any]] = []
        self.counter = itertools.count()
        self.end_us = int(cfg.minutes * 60 * US)
        self.truth = Truth(since=clock.start, until=clock.start + timedelta(microseconds=self.end_us))
        self.user_sessions: dict[str, list[SimSession]] = {}
        self.grace_us = us_of(grace)
        self.user_policy = user_policy  # LEDGER_REUSE_POLICY=user: a replay logs the whole user out

    def at(self, t_us: int, kind: str, target: Any) -> None:
        if t_us <= self.end_us:
            heapq.heappush(self.queue, (t_us, next(self.counter), kind, target))

    def span(self, bounds: tuple[float, float]) -> int:
        return int(self.rng.uniform(*bounds) * US)

    def plan(self) -> None:
        first_login = (0.0, self.cfg.minutes * 60 * 0.3)
        for i in range(self.cfg.users):
            sub = f"sim{self.run_tag}-user{i:04d}"
            self.user_sessions[sub] = []
            devices = 2 if self.rng.random() < self.cfg.second_device_prob else 1
            for _ in range(devices):
                self.at(self.span(first_login), "login", Device(sub, self.rng.choice(CLIENTS)))
            if self.rng.random() < self.cfg.password_change_prob:
                self.at(self.span((0.0, self.cfg.minutes * 60)), "password_change", sub)

    async def run(self) -> Truth:
        self.plan()
        deadline = time.monotonic() + self.cfg.max_wall_s
        while self.queue:
            if self.truth.actions >= self.cfg.max_actions or time.monotonic() > deadline:
                self.truth.truncated = True
                self.truth.until = self.clock()
                break
            t_us, _, kind, target = heapq.heappop(self.queue)
            self.clock.now_us = t_us
            self.truth.actions += 1
            await getattr(self, f"_{kind}")(target)
        return self.truth

    async def _login(self, device: Device) -> None:
        now = self.clock.now_us
        pair = await self.client.start_session(device.sub, client_id=device.client_id, scopes=("api",))
        s = SimSession(pair.sid, device.sub, device.client_id, now, [pair.refresh_token], now)
        s.index = len(self.truth.sessions)
        device.session = s
        self.truth.sessions.append(s)
        self.truth.trace.append(Step(now, "login", s.index, 0, device.sub, device.client_id))
        self.user_sessions[device.sub].append(s)
        self.at(now + self.span(self.cfg.refresh_every_s), "refresh", device)
        if self.rng.random() < self.cfg.replay_rate:
            self.at(now + self.span((90.0, 600.0)), "attack", (s, 0))

    async def _refresh(self, device: Device) -> None:
        s, now = device.session, self.clock.now_us
        assert s is not None
        if not s.alive(now, self.cfg):
            await self._expect_refusal(s.tokens[-1], (SessionExpired, SessionRevokedError))
            self.truth.refused_refreshes += 1
            await self._login(device)
            return
        pair = await self._call(self.client.rotate(s.tokens[-1]))
        if pair is None:
            return
        self.truth.trace.append(Step(now, "refresh", s.index, s.rotations))
        s.tokens.append(pair.refresh_token)
        s.rotations += 1
        s.last_activity_us = s.last_rotation_us = now
        self._next_after_refresh(device, now)

    def _next_after_refresh(self, device: Device, now: int) -> None:
        r = self.rng.random()
        if r < self.cfg.logout_prob:
            self.at(now + self.span((5.0, 60.0)), "logout", device)
        elif r < self.cfg.logout_prob + self.cfg.idle_prob:
            self.at(now + self.span(self.cfg.idle_gap_s), "refresh", device)
        else:
            self.at(now + self.span(self.cfg.refresh_every_s), "refresh", device)

    async def _logout(self, device: Device) -> None:
        s, now = device.session, self.clock.now_us
        assert s is not None
        if s.alive(now, self.cfg) and await self._call(self.client.logout(s.tokens[-1])) is not None:
            self.truth.trace.append(Step(now, "logout", s.index))
            s.end_us, s.end_kind = now, "revoked"
            self.truth.logouts += 1
        self.at(now + self.span(self.cfg.relogin_gap_s), "login", device)

    async def _password_change(self, sub: str) -> None:
        now = self.clock.now_us
        if await self._call(self.client.revoke_user(sub, "password_change")) is None:
            return
        self.truth.trace.append(Step(now, "revoke_all", sub=sub))
        self.truth.password_changes += 1
        for s in self.user_sessions[sub]:
            if s.alive(now, self.cfg):
                s.end_us, s.end_kind = now, "user_revoked"

    async def _attack(self, target: tuple[SimSession, int]) -> None:
        """Replay a stolen, superseded token; wait (bounded) until that is certain to be reuse."""
        s, tries = target
        now = self.clock.now_us
        if not s.alive(now, self.cfg) or tries > 10:
            return
        stolen = self.rng.randrange(0, s.rotations) if s.rotations else None
        fresh = stolen == s.rotations - 1 and s.last_rotation_us is not None
        if stolen is None or (fresh and now - (s.last_rotation_us or 0) <= self.grace_us):
            self.at(now + 60 * US, "attack", (s, tries + 1))
            return
        await self._expect_refusal(s.tokens[stolen], (TokenReused,))
        self.truth.trace.append(Step(now, "replay", s.index, stolen))
        s.end_us, s.end_kind = now, "reuse"
        for other in self.user_sessions[s.sub] if self.user_policy else ():
            if other.alive(now, self.cfg):
                other.end_us, other.end_kind = now, "user_revoked"
        self.truth.replays.append((s.sub, s.client_id, s.rotations - stolen))

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except LedgerError:
            self.truth.model_mismatches += 1
            return None

    async def _expect_refusal(self, token: str, errors: tuple[type[LedgerError], ...]) -> None:
        try:
            await self.client.rotate(token)
        except errors:
            return
        except LedgerError:
            pass
        self.truth.model_mismatches += 1


async def simulate(settings: Settings, cfg: SimConfig, *, start: datetime | None = None) -> dict[str, Any]:
    """Run one simulation against the ledger at ``settings.nats_url``; return the ground truth."""
    clock = SimClock(start or await start_time(settings))
    async with simulated_ledger(sim_settings(settings, cfg), clock) as client:
        user_policy = settings.reuse_policy.value == "user"
        truth = await Simulator(cfg, client, clock, settings.grace_window, user_policy=user_policy).run()
    return truth.summary(cfg)


async def run_demo(settings: Settings, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
    """``session-ledger up --demo``: simulate once in the background, print the ground truth."""
    if ready is not None:
        ready.set()
    try:
        truth = await simulate(settings, SimConfig())
    except Exception:
        logging.getLogger("session_ledger.sim.simulate").exception("demo simulation failed")
    else:
        print(json.dumps(truth, indent=2), flush=True)
        print(
            f"demo: session-ledger report summary --since {truth['since']} --until {truth['until']}",
            flush=True,
        )
    await stop.wait()
