"""``session-ledger up`` (embedded NATS JetStream + every component) and ``service``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from ledger.config import Settings
from ledger.jetstream.cluster import Cluster, ensure_stream_ready
from ledger.jetstream.connection import parse_url
from ledger.jetstream.embedded import NatsServer
from session_ledger.cli.common import COMMON, settings_from
from session_ledger.components import COMPONENTS, DEMO, SERVICE
from session_ledger.runtime import Component, run_components, run_one


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
        "--only",
        action="append",
        choices=[c.name for c in COMPONENTS],
        help="run only this component (repeat)",
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
    return [sys.executable, "-m", "session_ledger.cli", "service", "--nats-url", settings.nats_url,
            "--data-dir", str(settings.data_dir)]  # fmt: skip


def cmd_service(args: argparse.Namespace) -> None:
    """One stateless instance of the queue group: run as many as you need."""
    run_one(SERVICE, settings_from(args))


def chosen(only: list[str] | None, demo: bool) -> list[Component]:
    components = [c for c in COMPONENTS if not only or c.name in only]
    return [*components, DEMO] if demo else components


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
        print(f"starting nats-server (JetStream) on {server.url}, store {server.store_dir}", flush=True)
        server.start()
        settings = settings.model_copy(update={"nats_url": server.url})
    servers = ", ".join(parse_url(settings.nats_url).servers)
    try:
        ready_line = f"NATS {servers}, data {settings.data_dir.resolve()}"
        asyncio.run(run_components(settings, chosen(args.only, args.demo), ready_line=ready_line))
    finally:
        if server is not None:
            server.stop()
            print("nats-server stopped", flush=True)


def _env_has_url() -> bool:
    return "LEDGER_NATS_URL" in os.environ
