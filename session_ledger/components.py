"""The long-running components of session-ledger, by name: what ``up`` runs, in order,
and the NATS user each one connects as."""

from __future__ import annotations

from consumers.broadcast import run_broadcaster
from consumers.edge.sidecar import run_edge
from consumers.gateway.app import run_gateway
from ledger.service.app import run_service
from projections.analytics.rebuild import run_analytics
from projections.sessions.runner import run_sessions
from session_ledger.runtime import Component
from session_ledger.sim.simulate import run_demo

SERVICE = Component(
    "ledger-service",
    run_service,
    "commands on {s.subject_prefix}.cmd.* (queue group ledger-service)",
    "ledger",
)
SESSIONS = Component(
    "sessions", run_sessions, "sessions projection (KV) + queries on {s.subject_prefix}.q.*", "projector"
)
ANALYTICS = Component(
    "analytics",
    run_analytics,
    "DuckDB analytics {s.data_dir}/analytics.duckdb (+ .snapshot for readers)",
    "projector",
)
BROADCAST = Component(
    "broadcast",
    run_broadcaster,
    "revocation notices on {s.subject_prefix}.revoked.> (LEDGER_REVOCATIONS)",
    "ledger",
)
EDGE = Component(
    "edge", run_edge, "edge verifier + forward-auth sidecar on http://{s.edge_listen}/auth", "edge"
)
GATEWAY = Component(
    "gateway",
    run_gateway,
    "HTTP gateway (OAuth, JWKS, browser cookie flow) on http://127.0.0.1:8082 (LEDGER_GATEWAY_LISTEN)",
    "gateway",
)
DEMO = Component(
    "demo", run_demo, "traffic simulator (20 users, 30 simulated minutes), prints ground truth", "ledger"
)

COMPONENTS: tuple[Component, ...] = (SERVICE, SESSIONS, ANALYTICS, BROADCAST, EDGE, GATEWAY)
