"""Rate limits shared by every gateway instance: fixed-window counters in a NATS counter stream.

Each request adds one (``Nats-Incr: +1``) to ``<p>.rate.<scope>.<hash>.<window>`` and the
stream's ack carries the new total: one atomic round trip, the same count whichever instance
asks. Identities (client IP, session) enter subjects only as hashes. When the counter cannot
be reached the request goes on: the ledger call behind it needs NATS anyway.

A session's counter only counts what the ledger accepted (``peek`` before, ``hit`` after):
otherwise anyone who knows a sid could exhaust that session's limit with forged tokens
naming it, and lock its owner out for a window.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS

from ledger.contracts.subjects import RATE_STREAM, Subjects

log = logging.getLogger("consumers.gateway.ratelimit")


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    retry_after: int  # whole seconds until the window ends


def window_at(now: float, length: float) -> Window:
    index = int(now // length)
    return Window(index, max(1, math.ceil((index + 1) * length - now)))


def ident_key(scope: str, ident: str) -> str:
    return hashlib.sha256(f"{scope}\x00{ident}".encode()).hexdigest()[:32]


def over(count: int, limit: int) -> bool:
    return count > limit


class RateLimiter:
    def __init__(self, nc: NATS, prefix: str, window_s: float, timeout: float = 2.0) -> None:
        self.nc, self.subjects, self.window_s, self.timeout = nc, Subjects(prefix), window_s, timeout

    def _subject(self, scope: str, ident: str, window: Window) -> str:
        return self.subjects.rate_counter(scope, ident_key(scope, ident), window.index)

    async def hit(self, scope: str, ident: str, limit: int, *, now: float) -> int | None:
        """Count one request; the seconds to wait when ``limit`` is exceeded, else None."""
        window = window_at(now, self.window_s)
        subject = self._subject(scope, ident, window)
        try:
            msg = await self.nc.request(subject, b"", headers={"Nats-Incr": "+1"}, timeout=self.timeout)
            count = int(json.loads(msg.data)["val"])
        except (nats.errors.Error, TimeoutError, ValueError, KeyError, TypeError) as err:
            log.warning("rate counter unavailable (%s); not limiting", type(err).__name__)
            return None
        return window.retry_after if over(count, limit) else None

    async def peek(self, scope: str, ident: str, limit: int, *, now: float) -> int | None:
        """Like ``hit`` without counting: the seconds to wait when ``limit`` is already reached."""
        window = window_at(now, self.window_s)
        api = f"$JS.API.DIRECT.GET.{RATE_STREAM}.{self._subject(scope, ident, window)}"
        try:
            msg = await self.nc.request(api, b"", timeout=self.timeout)
            if (msg.headers or {}).get("Status") == "404":
                return None
            count = int(json.loads(msg.data)["val"])
        except (nats.errors.Error, TimeoutError, ValueError, KeyError, TypeError) as err:
            log.warning("rate counter unavailable (%s); not limiting", type(err).__name__)
            return None
        return window.retry_after if over(count + 1, limit) else None
