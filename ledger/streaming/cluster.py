"""A JetStream cluster of N real ``nats-server`` processes on loopback, for local trials and tests.

``session-ledger up --cluster 3`` runs one; production runs the same topology with
``nats-cluster.conf`` (see the README). Servers are stopped by the PIDs we started.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
from nats.js.errors import NotFoundError

from ledger.config import Settings
from ledger.domain.errors import ConfigError, Unavailable
from ledger.retry import retry
from ledger.streaming.connection import connect
from ledger.streaming.credentials import with_user
from ledger.streaming.embedded import NatsServer, free_port
from ledger.streaming.store import EventStore

CLUSTER_NAME = "ledger-cluster"

NOT_READY = (TimeoutError, nats.errors.Error)  # a cluster still electing its leaders


@dataclass
class Cluster:
    """N nodes named ``ledger-nats-1..N``, each routed to all the others."""

    base_dir: Path
    size: int = 3
    sync_always: bool = False
    extra_config: str = ""
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.size <= 7:
            raise ConfigError("a local cluster has 1 to 7 nodes")
        ports = [(free_port(), free_port()) for _ in range(self.size)]
        routes = [cluster_port for _, cluster_port in ports]
        self.servers = [
            NatsServer(
                store_dir=(self.base_dir / f"n{i}" / "jetstream").resolve(),
                port=client_port,
                name=f"ledger-nats-{i}",
                cluster_port=cluster_port,
                routes=routes,
                sync_always=self.sync_always,
                extra_config=self.extra_config,
            )
            for i, (client_port, cluster_port) in enumerate(ports, start=1)
        ]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (``LEDGER_NATS_URL`` accepts that form)."""
        return ",".join(server.url for server in self.servers)

    def start(self, timeout: float = 30.0, *, user: tuple[str, str] | None = None) -> Cluster:
        """Start every node; wait until JetStream answers (as ``user``, when auth is on)."""
        for server in self.servers:
            server.start()
        probe = self.url if user is None else with_user(self.url, *user)
        asyncio.run(wait_jetstream(probe, timeout))
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def kill(self, name: str) -> NatsServer:
        """SIGKILL one node (the crash case); ``restart(name)`` brings it back on its store."""
        server = self.by_name(name)
        server.kill()
        return server

    def restart(self, name: str) -> NatsServer:
        return self.by_name(name).start()

    def by_name(self, name: str) -> NatsServer:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)


async def wait_jetstream(url: str, timeout: float) -> None:
    """Until the JetStream meta leader is elected: the account info request then succeeds."""
    nc = await connect(url, "ledger-cluster-probe", deadline=timeout)
    try:
        await retry(nc.jetstream().account_info, on=NOT_READY, deadline=timeout, delay=0.2, what="JetStream")
    except NOT_READY:
        raise Unavailable(f"JetStream cluster not ready within {timeout}s") from None
    finally:
        await nc.close()


async def ensure_stream_ready(settings: Settings, timeout: float = 30.0) -> None:
    """Create the event stream and wait until it answers reads.

    A new replicated stream elects its leader first; a ledger service that starts in
    that moment finds its first read unanswered and stops with ``unavailable``.
    """
    nc = await connect(settings.nats_url, "ledger-cluster-probe", deadline=timeout)
    store = EventStore(nc, settings)

    async def answers() -> None:
        await store.ensure_stream()
        await store.last(store.subjects.keys_filter())

    try:
        await retry(answers, on=(*NOT_READY, Unavailable), deadline=timeout, delay=0.25, what="stream")
    except (*NOT_READY, Unavailable):
        raise Unavailable(f"stream {settings.stream} not ready within {timeout}s") from None
    finally:
        await nc.close()


async def stream_leader(url: str, stream: str, timeout: float = 10.0) -> str | None:
    """Name of the server leading ``stream`` now (None while an election is running)."""
    nc = await connect(url, "ledger-cluster-probe", deadline=timeout)
    try:
        info = await nc.jetstream(timeout=timeout).stream_info(stream)
    except NotFoundError:
        return None
    finally:
        await nc.close()
    return info.cluster.leader if info.cluster is not None else None
