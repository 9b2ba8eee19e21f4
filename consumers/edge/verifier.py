"""``EdgeVerifier``: verify access tokens locally, learn revocations from the broadcast.

It follows two sources over one NATS connection: the key events of the LEDGER stream
(public JWKs, kept forever, replayed from the start) and the ``LEDGER_REVOCATIONS``
notices (short-lived, replayed from the start: a bounded set). After every (re)connect
it resumes both from the last sequence it applied and only calls itself fresh once it
has caught up. ``verify`` is synchronous and O(1) beyond the signature check.

Staleness is the time since the verifier last knew it was connected and caught up
(a PING round trip every ``heartbeat`` seconds proves the connection). Beyond
``max_staleness`` it rejects everything (``stale``) unless ``fail_open`` was chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from consumers.edge import metrics as edge_metrics
from consumers.edge.receipts import ReceiptPublisher
from consumers.edge.state import Revocations
from ledger.config import Settings
from ledger.contracts.notices import (
    CLOCK_LEEWAY,
    Notice,
    decode_notice,
    notice_lifetime,
)
from ledger.contracts.receipts import KeyAck, Receipt
from ledger.contracts.subjects import NOTICES_STREAM, Subjects
from ledger.domain.access import (
    DEFAULT_LEEWAY,
    AccessClaims,
    Expectations,
    RejectReason,
    TokenRejected,
    check_signature,
    check_times,
)
from ledger.domain.errors import ConfigError, Unavailable
from ledger.domain.events import SigningKeyActivated, SigningKeyAdded, SigningKeyRetired, decode_event
from ledger.domain.keys import KeyBook
from ledger.retry import pause, poll_until, raise_if_cancelling
from ledger.streaming.connection import connect
from ledger.streaming.consumer import ordered_config
from ledger.streaming.keys import fold_key_event, trust_ring
from ledger.telemetry import metrics

__all__ = ["AccessClaims", "EdgeVerifier", "RejectReason", "TokenRejected", "default_verifier_id"]

log = logging.getLogger("consumers.edge.verifier")
CACHE_SIZE = 10_000


def default_verifier_id() -> str:
    """``edge-<host>-<pid>``, reduced to the characters a subject token allows."""
    raw = f"edge-{socket.gethostname()}-{os.getpid()}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw)[-64:]


async def cancel_all(tasks: list[asyncio.Task[None]], rounds: int = 50) -> None:
    """Cancel and wait, cancelling again: nats-py swallows a cancel that lands inside
    ``publish`` (``_flush_pending``), which would leave the task running forever."""
    for _ in range(rounds):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
    log.error("%d edge tasks ignored cancellation", sum(not t.done() for t in tasks))


class EdgeVerifier:
    def __init__(
        self,
        settings: Settings,
        *,
        verifier_id: str | None = None,
        max_staleness: timedelta | None = None,
        fail_open: bool | None = None,
        leeway: timedelta = DEFAULT_LEEWAY,
        heartbeat: float = 0.5,
        reconnect_wait: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.verifier_id = verifier_id or settings.edge_verifier_id or default_verifier_id()
        self.max_staleness = (max_staleness or settings.edge_max_staleness).total_seconds()
        self.fail_open = settings.edge_fail_open if fail_open is None else fail_open
        if self.max_staleness <= 0 or not timedelta(0) <= leeway <= CLOCK_LEEWAY:
            raise ConfigError(f"max_staleness must be > 0 and leeway within 0..{CLOCK_LEEWAY}")
        self.expect = Expectations(settings.issuer, settings.audience, leeway.total_seconds())
        self.heartbeat, self.reconnect_wait, self.clock = heartbeat, reconnect_wait, clock
        self.subjects = Subjects(settings.subject_prefix)
        self.keys, self.key_book, self.revocations = trust_ring(settings), KeyBook(), Revocations()
        self.stats: Counter[str] = Counter()
        self._cache: dict[str, AccessClaims] = {}  # verified tokens, oldest first (FIFO, bounded)
        self._seq = {"keys": 0, "notices": 0}
        self._fresh_at: float | None = None
        self._started_at = time.monotonic()
        self._broadcaster_at: float | None = None
        self.require_broadcaster = settings.edge_require_broadcaster
        self._live = False
        self._lost, self._connected = asyncio.Event(), asyncio.Event()
        self._caught_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.nc: NATS | None = None
        self.receipts: ReceiptPublisher | None = None

    # -- verification (synchronous, no I/O) ---------------------------------------------

    def verify(self, token: str) -> AccessClaims:
        """Claims of a valid, unrevoked token, or ``TokenRejected(reason)``. One frame: this is
        the per-request path, where a call costs about a percent of an RS256 check."""
        try:
            if not self.fail_open and not self._serving_at(time.monotonic()):
                raise TokenRejected(RejectReason.STALE)
            claims = self._cache.get(token)
            if claims is None:
                claims = check_signature(token, self.keys, self.expect, now=self.clock())
                cache = self._cache
                cache[token] = claims
                if len(cache) > CACHE_SIZE:
                    del cache[next(iter(cache))]  # the oldest: a dict keeps insertion order
            else:
                self.keys.lookup(claims.kid)  # the key may have been retired since
                check_times(claims, now=self.clock(), leeway=self.expect.leeway)
            self.revocations.check(claims)
        except TokenRejected as err:
            self.stats[f"rejected.{err.reason.value}"] += 1
            raise
        self.stats["accepted"] += 1
        return claims

    def serving(self) -> bool:
        """Connected and caught up recently, and the broadcaster alive (or fail-open)."""
        return self.fail_open or self._serving_at(time.monotonic())

    def _serving_at(self, now: float) -> bool:
        """``serving`` at monotonic ``now``, one clock read for both ages (the verify path)."""
        fresh_at = self._fresh_at
        if fresh_at is None or now - fresh_at > self.max_staleness:
            return False
        heard_at = self._broadcaster_at or self._started_at
        return not self.require_broadcaster or now - heard_at <= self.max_staleness

    def broadcaster_silence(self) -> float:
        """Seconds since the broadcaster's last heartbeat (since start when none came yet)."""
        return max(0.0, time.monotonic() - (self._broadcaster_at or self._started_at))

    def staleness(self) -> float:
        """Seconds since the verifier last knew it was connected and caught up."""
        if self._fresh_at is None:
            return float("inf")
        return max(0.0, time.monotonic() - self._fresh_at)

    def health(self) -> dict[str, Any]:
        staleness = self.staleness()
        return {
            "verifier": self.verifier_id,
            "live": self._live,
            "staleness_s": None if staleness == float("inf") else round(staleness, 3),
            "max_staleness_s": self.max_staleness,
            "fail_open": self.fail_open,
            "serving": self.serving(),
            "broadcaster_silent_s": round(self.broadcaster_silence(), 3),
            "keys": len(self.keys.keys),
            "retired_keys": len(self.keys.retired),
            "revocations": self.revocations.counts(),
            "applied_seq": dict(self._seq),
            "receipts": {
                "sent": self.receipts.sent if self.receipts else 0,
                "dropped": self.receipts.dropped if self.receipts else 0,
            },
            "counts": dict(self.stats),
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, *, timeout: float = 15.0) -> EdgeVerifier:
        """Connect, replay keys and live notices, follow; return once caught up."""
        self.nc = await connect(
            self.settings.nats_url,
            f"ledger-edge-{self.verifier_id}",
            deadline=timeout,
            reconnect_time_wait=self.reconnect_wait,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._connected.set()
        edge_metrics.watch(self)
        self.receipts = ReceiptPublisher(self.nc, self.verifier_id, self.settings.subject_prefix)
        await self.nc.subscribe(self.subjects.broadcaster_heartbeat, cb=self._on_broadcaster_beat)
        await self.nc.subscribe(self.subjects.verifiers_ping, cb=self._on_ping)
        for job in (self._sync_loop(), self._heartbeat_loop(), self._receipts_loop()):
            self._tasks.append(asyncio.create_task(job))
        try:
            await asyncio.wait_for(self._caught_up.wait(), timeout)
        except TimeoutError:
            await self.close()
            raise Unavailable("edge verifier could not catch up with the ledger") from None
        return self

    async def close(self) -> None:
        edge_metrics.forget(self)
        await cancel_all(self._tasks)
        self._tasks.clear()
        self._live = False
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _on_disconnected(self) -> None:
        self._live = False
        self._connected.clear()
        self._lost.set()

    async def _on_reconnected(self) -> None:
        self._connected.set()

    # -- following ------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            await self._connected.wait()
            try:
                await self._follow_once()
            except (nats.errors.Error, TimeoutError, OSError) as err:
                raise_if_cancelling()  # nats-py answers a cancelled request with TimeoutError
                log.info("edge verifier resyncing after %s", type(err).__name__)
            except Exception:
                raise_if_cancelling()
                log.exception("edge verifier follow failed; resyncing")
            self._live = False
            await pause(0.2)

    async def _follow_once(self) -> None:
        """Subscribe from where we stopped, wait until caught up, stay live until a disconnect."""
        assert self.nc is not None
        self._lost.clear()
        js = self.nc.jetstream(timeout=self.settings.request_timeout)
        await self._require_streams(js)
        subs: list[Any] = []
        try:
            subs.append(await self._subscribe(js, self.settings.stream, self.subjects.keys_filter(), "keys"))
            subs.append(await self._subscribe(js, NOTICES_STREAM, self.subjects.notices, "notices"))
            await self._wait_caught_up()
            self._live = True
            self._fresh_at = time.monotonic()
            self._caught_up.set()
            log.info("edge verifier %s live: %s", self.verifier_id, self._seq)
            await self._lost.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _require_streams(self, js: Any) -> None:
        """A verifier never creates a stream (nats.conf denies it): until the ledger service or
        the broadcaster has made them, it waits and resyncs."""
        for stream in (self.settings.stream, NOTICES_STREAM):
            try:
                await js.stream_info(stream)
            except NotFoundError:
                log.info("edge verifier waiting for stream %s (is the ledger service running?)", stream)
                raise TimeoutError from None

    async def _subscribe(self, js: Any, stream: str, subject: str, source: str) -> Any:
        handler: Callable[[Msg], Awaitable[None]] = self._on_key if source == "keys" else self._on_notice
        config = ordered_config(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._seq[source] + 1
        )
        return await js.subscribe(subject, stream=stream, cb=handler, ordered_consumer=True, config=config)

    async def _wait_caught_up(self, limit: float = 30.0) -> None:
        """Caught up = applied at least the last message each source holds right now."""
        sources = [
            ("keys", self.settings.stream, self.subjects.keys_filter()),
            ("notices", NOTICES_STREAM, self.subjects.notices),
        ]

        async def caught_up() -> bool:
            targets = [await self._last_seq(stream, subject) for _, stream, subject in sources]
            return all(self._seq[name] >= t for (name, _, _), t in zip(sources, targets, strict=True))

        await poll_until(caught_up, deadline=limit, interval=0.02, what="edge verifier caught up")

    async def _last_seq(self, stream: str, subject: str) -> int:
        """Sequence of the last message on ``subject`` (direct get), 0 if none."""
        assert self.nc is not None
        msg = await self.nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=2.0)
        headers = msg.headers or {}
        if headers.get("Status") == "404":
            return 0
        if "Nats-Sequence" not in headers:
            raise TimeoutError  # not answerable right now: resync
        return int(headers["Nats-Sequence"])

    async def _on_broadcaster_beat(self, msg: Msg) -> None:
        self._broadcaster_at = time.monotonic()

    async def _on_ping(self, msg: Msg) -> None:
        """Acknowledge the keys this verifier trusts, so a new key signs only once we have it."""
        if not msg.reply:
            return
        kids = sorted(set(self.keys.keys) - self.keys.retired)
        ack = KeyAck(verifier=self.verifier_id, kids=kids[-64:], keys_seq=self._seq["keys"])
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(ack.encode())

    async def _on_key(self, msg: Msg) -> None:
        self._seq["keys"] = max(self._seq["keys"], msg.metadata.sequence.stream)
        try:
            event = decode_event(msg.data)
            if isinstance(event, SigningKeyAdded | SigningKeyActivated | SigningKeyRetired):
                fold_key_event(self.keys, self.key_book, event)  # only with a trusted proof
        except Exception as err:  # a bad key event must not stop the verifier
            log.error(
                "ignoring unusable key event at seq %s: %s", msg.metadata.sequence.stream, type(err).__name__
            )

    async def _on_notice(self, msg: Msg) -> None:
        self._seq["notices"] = max(self._seq["notices"], msg.metadata.sequence.stream)
        try:
            notice = decode_notice(msg.data)
        except ValidationError:
            log.error("ignoring malformed notice at seq %s", msg.metadata.sequence.stream)
            return
        self.apply(notice)

    def apply(self, notice: Notice) -> None:
        """Fold a notice in and send its receipt the first time it is seen."""
        forget_at = notice.revoked_at.timestamp() + notice_lifetime(self.settings.access_ttl).total_seconds()
        if self.revocations.apply(notice, self.keys, forget_at) and self.receipts is not None:
            self.stats["notices_applied"] += 1
            self._observe(notice)
            self.receipts.submit(self._receipt(notice))

    def _observe(self, notice: Notice) -> None:
        metrics.EDGE_NOTICES.labels(notice.kind).inc()
        if self._live:  # a replay at start-up is not a delay
            metrics.EDGE_REVOCATION_DELAY.observe(max(0.0, time.time() - notice.revoked_at.timestamp()))

    def _receipt(self, notice: Notice) -> Receipt:
        return Receipt(
            verifier=self.verifier_id,
            event_id=notice.event_id,
            revoke_seq=notice.revoke_seq,
            kind=notice.kind,
            sid=notice.sid,
            sub=notice.sub,
            kid=notice.kid,
            applied_at=datetime.now(UTC),
        )

    async def _heartbeat_loop(self) -> None:
        """Prove the connection every ``heartbeat`` s; prune what has expired now and then."""
        beats = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            beats += 1
            if self._live and self.nc is not None:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await self.nc.flush(timeout=max(1, round(self.heartbeat)))
                    if self._live:
                        self._fresh_at = time.monotonic()
            if beats % 60 == 0:
                self.revocations.prune(self.clock())

    async def _receipts_loop(self) -> None:
        assert self.receipts is not None
        await self.receipts.run()
