"""What this instance last knew of each family: a hint that saves the read before a rotation.

A rotation normally reads the family's head and its user's cut, decides, and appends with a
compare-and-set on the family. With the head remembered from this instance's own last write
(or read), the read can be skipped, and a stale hint cannot cause a wrong answer:

* only a ``Rotated`` decision is acted on from a hint; every other outcome (a retry inside
  the grace window, reuse, an unknown or expired or revoked token) is decided again on a
  fresh read, so a hint never answers anything it could be wrong about;
* the append's compare-and-set on the family proves the hint's head was current: if another
  writer extended the family (another instance, a revocation), it conflicts and the rotation
  is decided again on a fresh read;
* the user's cut in a hint may be old, so a rotation from a hint always re-reads the cut
  after its append (invariant 8), as a rotation on a fresh read does when anything came
  between its read and its append.
"""

from __future__ import annotations

from collections import OrderedDict

from ledger.domain.decide import Family

HEADS_CACHE_SIZE = 100_000  # families; each holds its latest event (the facts are shared)


class Heads:
    """A bounded LRU of (family, user cut) by sid."""

    def __init__(self, size: int = HEADS_CACHE_SIZE) -> None:
        self.size = size
        self._known: OrderedDict[str, tuple[Family, int | None]] = OrderedDict()

    def get(self, sid: str) -> tuple[Family, int | None] | None:
        hint = self._known.get(sid)
        if hint is not None:
            self._known.move_to_end(sid)
        return hint

    def put(self, family: Family, cut: int | None) -> None:
        sid = family.started.sid
        if family.is_terminal:  # nothing more to decide from a hint
            self._known.pop(sid, None)
            return
        self._known[sid] = (family, cut)
        self._known.move_to_end(sid)
        if len(self._known) > self.size:
            self._known.popitem(last=False)

    def drop(self, sid: str) -> None:
        self._known.pop(sid, None)

    def __len__(self) -> int:
        return len(self._known)
