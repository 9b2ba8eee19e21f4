"""``session-ledger up``: embedded NATS JetStream + the ledger service (+ read side) on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from consumers.broadcast import run_broadcaster
from consumers.sidecar import run_edge
from ledger.app import run_service
from ledger.cli import COMMON, settings_from
from ledger.cluster import Cluster, ensure_stream_ready
from ledger.config import Settings
from ledger.embedded import NatsServer
from ledger.natsconn import parse_url
from projections.analytics import run_analytics
from projections.runner import run_sessions
from projections.simulate import DEMO

Runner = Callable[[Settings, asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]

# (name, runner, what it serves): later issues add projections and the edge verifier here.
COMPONENTS: list[tuple[str, Runner, str]] = [
    ("ledger-service", run_service, "commands on ledger.cmd.* (queue group ledger-service)"),
    ("sessions", run_sessions, "sessions projection (KV) + queries on ledger.q.*"),
    ("analytics", run_analytics, "DuckDB analytics <data-dir>/analytics.duckdb (+ .snapshot for readers)"),
    ("broadcast", run_broadcaster, "revocation notices on ledger.revoked.> (stream LEDGER_REVOCATIONS)"),
    ("edge", run_edge, "edge verifier + forward-auth sidecar on LEDGER_EDGE_LISTEN (127.0.0.1:8081)/auth"),
]


def register(sub: Any) -> None:
    up = sub.add_parser("up", parents=[COMMON], help="run the ledger with an embedded NATS JetStream server")
    up.add_argument("--data-dir", type=Path, help="state directory (default ./.ledger)")
    up.add_argument("--nats-port", type=int, default=4222, help="embedded NATS port (default 4222)")
    up.add_argument(
        "--sync-always", action="store_true", help="fsync every write (survives power loss; slower)"
    )
    up.add_argument(
        "--cluster", type=int, metavar="N", help="N loopback nats-servers as one cluster, streams R=N (max 5)"
    )
    up.add_argument(
        "--only", action="append", choices=[c[0] for c in COMPONENTS], help="run only this component (repeat)"
    )
    up.add_argument("--demo", action="store_true", help="also run the traffic simulator once (see simulate)")
    up.set_defaults(func=cmd_up)

    service = sub.add_parser(
        "service", parents=[COMMON], help="run one ledger service instance against an existing NATS"
    )
    service.add_argument("--data-dir", type=Path, help="state directory with keys/ (default ./.ledger)")
    service.set_defaults(func=cmd_service)


def service_command(settings: Settings) -> list[str]:
    """The argv that runs one service instance in its own process (tests, benchmarks)."""
    return [sys.executable, "-m", "ledger.cli", "service", "--nats-url", settings.nats_url,
            "--data-dir", str(settings.data_dir)]  # fmt: skip


def cmd_service(args: argparse.Namespace) -> None:
    """One stateless instance of the queue group: run as many as you need."""
    asyncio.run(run_components(settings_from(args), COMPONENTS[:1]))


def cmd_up(args: argparse.Namespace) -> None:
    settings = settings_from(args)
    server: NatsServer | Cluster | None = None
    if args.cluster and args.nats_url is None and not _env_has_url():
        server = Cluster((settings.data_dir / "cluster").resolve(), args.cluster, args.sync_always)
        print(f"starting {args.cluster} nats-servers (JetStream cluster) on {server.url}", flush=True)
        server.start()
        settings = settings.model_copy(update={"nats_url": server.url, "replicas": min(args.cluster, 5)})
        asyncio.run(ensure_stream_ready(settings))
    elif args.nats_url is None and not _env_has_url():
        server = NatsServer(
            store_dir=(settings.data_dir / "jetstream").resolve(),
            port=args.nats_port,
            sync_always=args.sync_always,
        )
        print(
            f"starting nats-server (JetStream) on {server.url}, store {server.store_dir}",
            flush=True,
        )
        server.start()
        settings = settings.model_copy(update={"nats_url": server.url})
    try:
        only = [c for c in COMPONENTS if c[0] in args.only] if args.only else None
        if args.demo:
            only = [*(only or COMPONENTS), DEMO]
        asyncio.run(run_components(settings, only))
    finally:
        if server is not None:
            server.stop()
            print("nats-server stopped", flush=True)


def _env_has_url() -> bool:
    import os

    return "LEDGER_NATS_URL" in os.environ


async def run_components(
    settings: Settings, components: list[tuple[str, Runner, str]] | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks: list[asyncio.Task[None]] = []
    for name, runner, what in COMPONENTS if components is None else components:
        ready = asyncio.Event()
        task = asyncio.create_task(runner(settings, stop, ready), name=name)
        await _wait_ready(task, ready)
        print(f"{name:<16} {what}", flush=True)
        tasks.append(task)
    print(
        f"ready: NATS {', '.join(parse_url(settings.nats_url).servers)}, data {settings.data_dir.resolve()}"
        " (Ctrl-C to stop)",
        flush=True,
    )
    await stop.wait()
    print("stopping...", flush=True)
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def _wait_ready(task: asyncio.Task[None], ready: asyncio.Event) -> None:
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        task.result()
    elif not ready.is_set():
        print(f"{task.get_name()} did not become ready in 30s", file=sys.stderr)
        raise SystemExit(3)
