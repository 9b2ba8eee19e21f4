"""Schema-valid ledger events in bulk for load tests and benchmarks (no service needed)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

from ledger.contracts.subjects import Subjects

CLIENTS = ("web", "ios", "android", "cli")


def synthetic_events(
    n: int, *, prefix: str = "ledger", start: datetime | None = None
) -> Iterator[tuple[str, bytes]]:
    """``n`` schema-valid ledger events (families of start, rotations, end) for load tests:
    templated bytes, so generating a million costs seconds, not minutes."""
    t0 = (start or datetime(2026, 1, 1, tzinfo=UTC)).timestamp()
    rng = random.Random(7)
    subjects = Subjects(prefix)
    i = 0
    while i < n:
        sid = f"{i:022d}"
        sub = f"user{rng.randrange(10_000)}"
        rotations = rng.randrange(0, 8)
        for gen in range(min(rotations + 2, n - i)):
            ts = datetime.fromtimestamp(t0 + i, UTC).isoformat().replace("+00:00", "Z")
            if gen == 0:
                kind, body = "started", _STARTED % (sub, CLIENTS[i % 4])
            elif gen <= rotations:
                kind, body = "rotated", '"type":"TokenRotated"'
            else:
                kind, body = "revoked", _REVOKED % (sub, ts)
            g = min(gen, rotations)
            yield (
                subjects.family_event(sid, kind),
                (_HEAD % (i, ts, sid, g, i) + body + "}").encode(),
            )
            i += 1


_HEAD = (
    '{"schema_version":1,"event_id":"%032x","occurred_at":"%s","sid":"%s","generation":%d,'
    '"token_hash":"%064x",'
)
_STARTED = (
    '"type":"SessionStarted","sub":"%s","client_id":"%s","scopes":["api"],'
    '"idle_ttl_s":604800,"absolute_ttl_s":2592000'
)
_REVOKED = '"type":"SessionRevoked","sub":"%s","reason":"logout","requested_at":"%s"'
