"""What an appended event means to an operator: counters, and one log line with its ids.

Called by the event store once per acknowledged append. Revocations and reuse are logged
at INFO (the service warns about a reuse itself) with ``event_id``, ``sid``, ``seq``
(structured fields in the JSON format), every other event at DEBUG; a token or a keyed
hash never reaches a line.
"""

from __future__ import annotations

import logging

from ledger.domain.events import (
    AccessTokenRevoked,
    Event,
    ReuseDetected,
    SessionRevoked,
    SigningKeyRetired,
    UserSessionsRevoked,
)
from ledger.telemetry import metrics

log = logging.getLogger("ledger.audit")


def revocation_of(event: Event) -> tuple[str, str] | None:
    """(kind, reason) of a revoking event, None for the others. A ``ReuseDetected`` is a
    detection: the revocation it causes is its own event (session or user, reason reuse)."""
    if isinstance(event, SessionRevoked):
        return "session", str(event.reason)
    if isinstance(event, UserSessionsRevoked):
        return "user", str(event.reason)
    if isinstance(event, SigningKeyRetired):
        return "key", event.reason
    if isinstance(event, AccessTokenRevoked):
        return "token", "revoked"
    return None


def fields(event: Event, seq: int) -> dict[str, object]:
    """The ids a log line may carry: never a token, a hash or a key."""
    extra: dict[str, object] = {"event_id": event.event_id, "event_type": event.type, "seq": seq}
    for name in ("sid", "kid"):
        if (value := getattr(event, name, None)) is not None:
            extra[name] = value
    return extra


def appended(event: Event, seq: int) -> None:
    metrics.EVENTS_APPENDED.labels(event.type).inc()
    revocation = revocation_of(event)
    if isinstance(event, ReuseDetected):
        metrics.REUSE_DETECTIONS.labels(event.policy).inc()
        log.info("reuse detected (policy %s)", event.policy, extra=fields(event, seq))
    if revocation is not None:
        metrics.REVOCATIONS.labels(*revocation).inc()
        log.info("revoked: %s (%s)", *revocation, extra=fields(event, seq))
    elif log.isEnabledFor(logging.DEBUG):  # the hot path: no extra dict unless it is shown
        log.debug("appended %s", event.type, extra=fields(event, seq))
