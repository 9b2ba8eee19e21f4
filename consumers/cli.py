"""``session-ledger edge`` (forward-auth sidecar) and ``session-ledger broadcast`` (notices)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from consumers.broadcast import run_broadcaster
from consumers.sidecar import run_edge
from ledger.cli import COMMON, settings_from
from ledger.config import Settings

Runner = Callable[[Settings, asyncio.Event, asyncio.Event | None], Coroutine[Any, Any, None]]


def register(sub: Any) -> None:
    edge = sub.add_parser(
        "edge", parents=[COMMON], help="run an edge verifier as a forward-auth HTTP sidecar"
    )
    edge.add_argument("--listen", help="host:port to serve (env LEDGER_EDGE_LISTEN; default 127.0.0.1:8081)")
    edge.add_argument("--max-staleness", type=float, help="seconds without NATS before failing closed")
    edge.add_argument("--fail-open", action="store_true", help="keep accepting when stale (explicit opt-in)")
    edge.add_argument("--verifier-id", help="name in propagation receipts (default edge-<host>-<pid>)")
    edge.set_defaults(func=cmd_edge)
    broadcast = sub.add_parser(
        "broadcast", parents=[COMMON], help="derive revocation notices from the ledger stream"
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
    return Settings(**{**settings_from(args).model_dump(exclude_unset=True), **update})


def cmd_edge(args: argparse.Namespace) -> None:
    settings = edge_settings(args)
    print(f"edge verifier: forward-auth on http://{settings.edge_listen}/auth", flush=True)
    asyncio.run(_until_signal(run_edge, settings))


def cmd_broadcast(args: argparse.Namespace) -> None:
    asyncio.run(_until_signal(run_broadcaster, settings_from(args)))


async def _until_signal(runner: Runner, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runner(settings, stop, None)
