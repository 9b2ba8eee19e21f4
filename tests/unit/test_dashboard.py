"""The Grafana dashboard reads metrics that exist, and covers what the issue asks to watch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import consumers.edge.metrics  # noqa: F401  (registers the verifiers' collector)
import ledger.telemetry.metrics  # noqa: F401
from ledger.telemetry.metrics import REGISTRY

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "session-ledger.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_query_reads_a_metric_the_code_exposes() -> None:
    used = {name for expr in expressions() for name in re.findall(r"\bledger_[a-z_]+", expr)}
    assert used and used <= exposed_names(), used - exposed_names()


def test_the_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(expressions())
    for needed in (
        'ledger_commands_total{command="rotate"',
        "ledger_reuse_detections_total",
        "ledger_revocations_total",
        "ledger_edge_verify_total",
        "ledger_projection_lag_events",
        "ledger_edge_staleness_seconds",
        "ledger_broadcast_delay_seconds_bucket",
        "ledger_nats_reconnects_total",
    ):
        assert needed in text, needed


def test_panels_have_unique_ids_and_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["datasource"]["type"] == "prometheus" for panel in dashboard["panels"])
    assert dashboard["uid"] == "session-ledger"
