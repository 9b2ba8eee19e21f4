"""Every Prometheus metric of session-ledger, in one place (the README's Monitoring list).

Labels hold names, kinds, reasons and outcomes only: never a token, a key, a user or a
session id (invariant 4, and a bounded number of series). One process exposes one
registry (``ledger.telemetry.endpoint``); ``up`` runs every component in one process, so
its endpoint carries all of them.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

__all__ = ["REGISTRY", "CollectorRegistry"]
disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the exposition and no panel reads them

FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# -- ledger service -----------------------------------------------------------------------
COMMANDS = Counter(
    "ledger_commands",
    "Commands answered by the ledger service, by command (start, rotate, revoke, logout, "
    "revoke_user) and outcome (ok or the error code, e.g. token_reused, invalid_token)",
    ["command", "outcome"],
)
COMMAND_SECONDS = Histogram(
    "ledger_command_duration_seconds", "Time to decide and append a command", ["command"], buckets=FAST
)
EVENTS_APPENDED = Counter("ledger_events_appended", "Events appended to the LEDGER stream", ["type"])
REUSE_DETECTIONS = Counter(
    "ledger_reuse_detections", "Superseded refresh tokens presented outside the grace window", ["policy"]
)
REVOCATIONS = Counter(
    "ledger_revocations",
    "Revocations appended, by kind (session, user, key) and reason (logout, reuse, admin, ...)",
    ["kind", "reason"],
)

# -- checkpointed consumers: projections and the broadcaster -------------------------------
CONSUMER_APPLIED_SEQ = Gauge(
    "ledger_projection_applied_seq", "Last stream sequence applied by a consumer", ["projection"]
)
CONSUMER_LAG = Gauge(
    "ledger_projection_lag_events",
    "Messages of the consumer's filter still waiting on the server after the last batch",
    ["projection"],
)
CONSUMER_EVENTS = Counter("ledger_projection_events", "Events applied by a consumer", ["projection"])
CONSUMER_RETRIES = Counter(
    "ledger_projection_retries",
    "Re-binds of a consumer after its first: NATS was away, or a batch was not (fully) applied",
    ["projection"],
)
CONSUMER_PROGRESS_AT = Gauge(
    "ledger_projection_last_step_timestamp_seconds",
    "Unix time of the consumer's last successful step (time() - this = how long it is stuck)",
    ["projection"],
)

# -- revocation broadcaster ---------------------------------------------------------------
NOTICES = Counter("ledger_broadcast_notices", "Revocation notices published, by kind", ["kind"])
BROADCAST_DELAY = Histogram(
    "ledger_broadcast_delay_seconds",
    "From the revoking event stored in LEDGER to its notice acknowledged by LEDGER_REVOCATIONS",
    buckets=FAST,
)

# -- edge verifiers -----------------------------------------------------------------------
# ledger_edge_verify_total, ledger_edge_staleness_seconds, ledger_edge_broadcaster_silence_seconds
# and ledger_edge_serving are read from the verifiers at scrape time (consumers.edge.metrics).
EDGE_NOTICES = Counter("ledger_edge_notices_applied", "Revocation notices applied, by kind", ["kind"])
EDGE_REVOCATION_DELAY = Histogram(
    "ledger_edge_revocation_delay_seconds",
    "From the revocation's time (service clock) to the notice applied at the edge (edge clock)",
    buckets=FAST,
)

# -- NATS connections ---------------------------------------------------------------------
NATS_RECONNECTS = Counter("ledger_nats_reconnects", "NATS reconnections, by connection name", ["connection"])
NATS_DISCONNECTS = Counter(
    "ledger_nats_disconnects", "NATS disconnections, by connection name", ["connection"]
)

# -- HTTP servers (edge sidecar, gateway) ---------------------------------------------------
HTTP_REQUESTS = Counter(
    "ledger_http_requests",
    "HTTP requests answered, by server, route and status",
    ["server", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "ledger_http_request_duration_seconds", "HTTP request handling time", ["server", "route"], buckets=FAST
)

# -- components -----------------------------------------------------------------------------
COMPONENT_UP = Gauge("ledger_component_up", "1 while a component of this process runs", ["component"])
