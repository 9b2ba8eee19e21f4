"""``session-ledger edge`` (forward-auth sidecar) and ``session-ledger broadcast`` (notices)."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from ledger.config import Settings
from session_ledger.cli.common import COMMON, SERVING, settings_from
from session_ledger.components import BROADCAST, EDGE
from session_ledger.runtime import run_one


def register(sub: Any) -> None:
    edge = sub.add_parser(
        "edge", parents=[COMMON, SERVING], help="run an edge verifier as a forward-auth HTTP sidecar"
    )
    edge.add_argument("--listen", help="host:port to serve (env LEDGER_EDGE_LISTEN; default 127.0.0.1:8081)")
    edge.add_argument("--max-staleness", type=float, help="seconds without NATS before failing closed")
    edge.add_argument("--fail-open", action="store_true", help="keep accepting when stale (explicit opt-in)")
    edge.add_argument("--verifier-id", help="name in propagation receipts (default edge-<host>-<pid>)")
    edge.set_defaults(func=cmd_edge)
    broadcast = sub.add_parser(
        "broadcast", parents=[COMMON, SERVING], help="derive revocation notices from the ledger stream"
    )
    broadcast.set_defaults(func=cmd_broadcast)


def edge_settings(args: argparse.Namespace) -> Settings:
    update: dict[str, Any] = {}
    if args.listen:
        update["edge_listen"] = args.listen
    if args.max_staleness is not None:
        update["edge_max_staleness"] = timedelta(seconds=args.max_staleness)
    if args.fail_open:
        update["edge_fail_open"] = True
    if args.verifier_id:
        update["edge_verifier_id"] = args.verifier_id
    return settings_from(args, "edge").model_copy(update=update)


def cmd_edge(args: argparse.Namespace) -> None:
    run_one(EDGE, edge_settings(args))


def cmd_broadcast(args: argparse.Namespace) -> None:
    run_one(BROADCAST, settings_from(args, "ledger"))
