"""``session-ledger up`` (embedded NATS JetStream + every component) and ``service``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ledger.config import Settings
from ledger.domain.errors import ConfigError
from ledger.streaming.cluster import Cluster, ensure_stream_ready
from ledger.streaming.connection import parse_url
from ledger.streaming.credentials import (
    USERS,
    has_credentials,
    load,
    load_or_create,
    role_url,
    server_auth,
    with_user,
)
from ledger.streaming.embedded import NatsServer, free_port, port_answers
from session_ledger.cli.common import COMMON, SERVING, settings_from
from session_ledger.components import COMPONENTS, DEMO, SERVICE
from session_ledger.runtime import Component, run_components, run_one
from session_ledger.workers import (
    default_workers,
    follow_supervisor,
    supervise,
    worker_command,
    worker_env,
)

DEFAULT_METRICS_PORT = 9464  # the port of OpenTelemetry's Prometheus exporter
DEFAULT_MONITOR_PORT = 8222  # nats-server's usual monitoring port


def register(sub: Any) -> None:
    up = sub.add_parser(
        "up", parents=[COMMON, SERVING], help="run the ledger with an embedded NATS JetStream server"
    )
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
    up.add_argument(
        "--nats-monitor-port",
        type=int,
        metavar="PORT",
        help="the embedded nats-server's HTTP monitoring port on 127.0.0.1, 0 = off "
        f"(default {DEFAULT_MONITOR_PORT}, or a free port when that one is taken)",
    )
    up.set_defaults(func=cmd_up)

    service = sub.add_parser(
        "service", parents=[COMMON, SERVING], help="run ledger service instances against an existing NATS"
    )
    service.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="run N service processes under one supervisor (one per core; 'auto': this machine's "
        "cores; default 1); with --metrics-listen HOST:PORT, worker i serves PORT+i",
    )
    service.set_defaults(func=cmd_service)


def worker_count(text: str) -> int:
    if text == "auto":
        return default_workers()
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of processes (1-64) or 'auto'") from None
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError("a number of processes (1-64) or 'auto'")
    return count


def service_command(settings: Settings) -> list[str]:
    """The argv that runs one service instance in its own process (tests, benchmarks).

    Never with a password in it (``ps`` shows every argv): credentials go through
    ``LEDGER_NATS_URL`` in the child's environment or the data dir's credentials file.
    """
    if has_credentials(settings.nats_url):
        raise ConfigError("pass NATS credentials through LEDGER_NATS_URL, never on a command line")
    return [sys.executable, "-m", "session_ledger.cli", "service", "--nats-url", settings.nats_url,
            "--data-dir", str(settings.data_dir)]  # fmt: skip


def cmd_service(args: argparse.Namespace) -> None:
    """Stateless instances of the queue group: one here, or ``--workers N`` processes."""
    settings = settings_from(args, "ledger")
    if args.workers == 1:
        follow_supervisor()  # a worker of ``--workers N`` ends with its supervisor
        run_one(SERVICE, settings)
        return
    shared = {
        **os.environ,
        "LEDGER_NATS_URL": settings.nats_url,  # the environment, never argv (``ps`` shows argv)
        "LEDGER_DATA_DIR": str(settings.data_dir),
        "LEDGER_LOG_LEVEL": settings.log_level,
        "LEDGER_LOG_FORMAT": settings.log_format,
    }
    code = supervise(args.workers, worker_command(), lambda i: worker_env(shared, i, settings.metrics_listen))
    if code:
        raise SystemExit(code)


def chosen(only: list[str] | None, demo: bool) -> list[Component]:
    components = [c for c in COMPONENTS if not only or c.name in only]
    return [*components, DEMO] if demo else components


def cmd_up(args: argparse.Namespace) -> None:
    settings = with_default_metrics(settings_from(args))
    components = chosen(args.only, args.demo)
    if args.nats_url is not None or _env_has_url():  # an existing NATS: connect as the roles
        urls = {user: role_url(settings.nats_url, settings.data_dir, user) for user in USERS}
        _serve(settings, components, urls)
        return
    with hold_data_dir(settings.data_dir):
        passwords = load_or_create(settings.data_dir)
        server = _embedded(args, settings, server_auth(passwords))
        try:
            urls = {user: with_user(server.url, user, passwords[user]) for user in USERS}
            settings = settings.model_copy(update={"nats_url": urls["ledger"]})
            if isinstance(server, Cluster):
                settings = settings.model_copy(update={"replicas": min(args.cluster, 5)})
                asyncio.run(ensure_stream_ready(settings))
            _serve(settings, components, urls)
        finally:
            server.stop()
            print("nats-server stopped", flush=True)


def _embedded(args: argparse.Namespace, settings: Settings, auth: str) -> NatsServer | Cluster:
    """Start the embedded server (or cluster) with the same users and permissions as nats.conf."""
    if args.cluster:
        cluster = Cluster((settings.data_dir / "cluster").resolve(), args.cluster, args.sync_always, auth)
        print(f"starting {args.cluster} nats-servers (JetStream cluster) on {cluster.url}", flush=True)
        return cluster.start(user=("ledger", _password(settings)))
    if port_answers("127.0.0.1", args.nats_port):
        raise ConfigError(
            f"port {args.nats_port} already answers (another `up`?); stop it or pass --nats-port"
        )
    server = NatsServer(
        store_dir=(settings.data_dir / "jetstream").resolve(),
        port=args.nats_port,
        sync_always=args.sync_always,
        extra_config=auth,
        monitor_port=loopback_port(args.nats_monitor_port, DEFAULT_MONITOR_PORT, "--nats-monitor-port"),
    )
    print(f"starting nats-server (JetStream) on {server.url}, store {server.store_dir}", flush=True)
    server.start()
    print(f"{'nats monitor':<16} {server.monitor_url or 'off'}", flush=True)
    return server


def loopback_port(asked: int | None, default: int, flag: str) -> int:
    """The port asked for (refused when it already answers), else ``default`` when it is
    free, else any free port: the banner prints the one in use. 0 means off."""
    if asked is not None:
        if asked and port_answers("127.0.0.1", asked):
            raise ConfigError(f"port {asked} already answers; pass another {flag} (or 0 for off)")
        return asked
    return default if not port_answers("127.0.0.1", default) else free_port()


def with_default_metrics(settings: Settings) -> Settings:
    """``up`` serves /metrics unless told otherwise (``--metrics-listen off``)."""
    if settings.metrics_listen is not None:
        return settings
    port = loopback_port(None, DEFAULT_METRICS_PORT, "--metrics-listen")
    return settings.model_copy(update={"metrics_listen": f"127.0.0.1:{port}"})


def _password(settings: Settings) -> str:
    passwords = load(settings.data_dir)
    assert passwords is not None
    return passwords["ledger"]


def _serve(settings: Settings, components: list[Component], urls: dict[str, str]) -> None:
    servers = ", ".join(parse_url(settings.nats_url).servers)
    ready_line = f"NATS {servers}, data {settings.data_dir.resolve()}"
    asyncio.run(run_components(settings, components, ready_line=ready_line, urls=urls))


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """One ``up`` per data directory: two would run two nats-servers on one store."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(data_dir / "up.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `session-ledger up` runs with data dir {data_dir}") from None
        yield


def _env_has_url() -> bool:
    return "LEDGER_NATS_URL" in os.environ
