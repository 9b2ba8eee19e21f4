"""Rate limits shared by every gateway instance: fixed-window counters in a NATS counter stream.

Each request adds one (``Nats-Incr: +1``) to ``<p>.rate.<scope>.<hash>.<window>`` and the
stream's ack carries the new total: one atomic round trip, the same count whichever instance
asks. Identities (client IP, session) enter subjects only as keyed hashes. When the counter
cannot be reached the request goes on: the ledger call behind it needs NATS anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS

from ledger.contracts.subjects import Subjects

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

    async def hit(self, scope: str, ident: str, limit: int, *, now: float) -> int | None:
        """Count one request; the seconds to wait when ``limit`` is exceeded, else None."""
        window = window_at(now, self.window_s)
        subject = self.subjects.rate_counter(scope, ident_key(scope, ident), window.index)
        try:
            msg = await self.nc.request(subject, b"", headers={"Nats-Incr": "+1"}, timeout=self.timeout)
            count = int(json.loads(msg.data)["val"])
        except (nats.errors.Error, TimeoutError, ValueError, KeyError, TypeError) as err:
            log.warning("rate counter unavailable (%s); not limiting", type(err).__name__)
            return None
        return window.retry_after if over(count, limit) else None
