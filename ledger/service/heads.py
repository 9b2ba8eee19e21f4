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
* the user's cut in a hint may be old, so a rotation from a hint re-reads the cut after its
  append (invariant 8) unless the append landed right after the sequence up to which the
  hint's cut is known (nothing came between), exactly as a rotation on a fresh read does.
  Every instance also hears each revoke-all as it is appended (``forget_user``), so a hint
  of a revoked user is not used: a rotation of such a session is refused on a fresh read,
  without appending a rotation it would have to refuse.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from ledger.domain.decide import Family


class Hint(NamedTuple):
    """A family as last known here, its user's cut, and the stream sequence up to which that
    cut is known complete (None: unknown). A rotation whose append lands right after
    ``known_to`` had nothing, so no revoke-all, come between: its cut check can be skipped."""

    family: Family
    cut: int | None
    known_to: int | None


class Heads:
    """A bounded LRU of hints by sid, with the sids of each user."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._known: OrderedDict[str, Hint] = OrderedDict()
        self._by_user: dict[str, set[str]] = {}

    def get(self, sid: str) -> Hint | None:
        hint = self._known.get(sid)
        if hint is not None:
            self._known.move_to_end(sid)
        return hint

    def put(self, family: Family, cut: int | None, known_to: int | None) -> None:
        sid = family.started.sid
        if family.is_terminal or self.size == 0:  # nothing more to decide from a hint
            self.drop(sid)
            return
        if sid not in self._known:
            self._by_user.setdefault(family.started.sub, set()).add(sid)
        self._known[sid] = Hint(family, cut, known_to)
        self._known.move_to_end(sid)
        if len(self._known) > self.size:
            self.drop(next(iter(self._known)))

    def drop(self, sid: str) -> None:
        hint = self._known.pop(sid, None)
        if hint is None:
            return
        sub = hint.family.started.sub
        sids = self._by_user.get(sub)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self._by_user[sub]

    def forget_user(self, sub: str) -> None:
        """A revoke-all of ``sub`` was appended: none of its hints knows that cut."""
        for sid in self._by_user.pop(sub, ()):
            self._known.pop(sid, None)

    def __len__(self) -> int:
        return len(self._known)
