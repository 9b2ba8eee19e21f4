"""One way to connect to NATS: bounded first connect, endless reconnects afterwards."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
from faststream.nats.security import NatsUserPassword
from nats.aio.client import Client as NATS

from ledger.domain.errors import Unavailable
from ledger.telemetry import metrics

log = logging.getLogger("ledger.nats")
_USER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Endpoint:
    """``nats_url`` split into servers and credentials.

    Accepts a comma-separated list (a cluster) with ``user:password@`` in any URL.
    Credentials are passed as options, not kept in the URLs, so that servers the
    client discovers from the cluster get them too (nats-py only reuses URL
    credentials for the URL they came with). Each user reads replies on its own
    inbox prefix ``_INBOX.<user>``, the only inbox ``nats.conf`` lets it subscribe to.
    """

    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = None

    @property
    def inbox_prefix(self) -> str:
        return f"_INBOX.{self.user}" if self.user and _USER_RE.fullmatch(self.user) else "_INBOX"

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        opts: dict[str, Any] = {"servers": list(self.servers), "inbox_prefix": self.inbox_prefix}
        if self.user is not None:
            opts.update(user=self.user, password=self.password or "")
        return opts


def parse_url(url: str) -> Endpoint:
    servers, user, password = [], None, None
    for raw in (part.strip() for part in url.split(",")):
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"nats://{raw}")
        if parts.username is not None and user is None:
            user, password = unquote(parts.username), unquote(parts.password or "")
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        servers.append(f"{parts.scheme}://{host}:{parts.port or 4222}")
    return Endpoint(tuple(servers), user, password)


def broker_options(url: str, name: str = "faststream") -> dict[str, Any]:
    """The same servers, credentials and inbox for a FastStream ``NatsBroker``."""
    endpoint = parse_url(url)
    opts: dict[str, Any] = {
        "servers": list(endpoint.servers),
        "inbox_prefix": endpoint.inbox_prefix,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        **counted_callbacks(name, {}),
    }
    if endpoint.user is not None:
        opts["security"] = NatsUserPassword(endpoint.user, endpoint.password or "")
    return opts


async def _quiet_error(exc: Exception) -> None:
    log.debug("nats: %s: %s", type(exc).__name__, exc)


Callback = Callable[[], Awaitable[None]]


def counted_callbacks(name: str, options: dict[str, Any]) -> dict[str, Callback]:
    """``disconnected_cb``/``reconnected_cb`` that count into the NATS metrics, then call the
    callbacks given in ``options`` (if any)."""

    def counting(counter: Any, inner: Callback | None) -> Callback:
        async def callback() -> None:
            counter.labels(name).inc()
            if inner is not None:
                await inner()

        return callback

    return {
        "disconnected_cb": counting(metrics.NATS_DISCONNECTS, options.get("disconnected_cb")),
        "reconnected_cb": counting(metrics.NATS_RECONNECTS, options.get("reconnected_cb")),
    }


async def connect(url: str, name: str, *, deadline: float = 10.0, **options: Any) -> NATS:
    """Connect within ``deadline`` seconds or raise ``Unavailable``; then reconnect forever.

    nats-py treats ``max_reconnect_attempts=-1`` as "retry the first connect forever"
    too, so the deadline bounds it here.
    """
    options.setdefault("max_reconnect_attempts", -1)
    options.setdefault("reconnect_time_wait", 0.25)
    options.setdefault("connect_timeout", 2)
    options.setdefault("error_cb", _quiet_error)
    options.update(counted_callbacks(name, options))
    endpoint = parse_url(url)
    for key, value in endpoint.options().items():
        options.setdefault(key, value)
    try:
        return await asyncio.wait_for(nats.connect(name=name, **options), deadline)
    except (TimeoutError, OSError, nats.errors.Error):
        where = ", ".join(endpoint.servers)  # never the URL: it may hold a password
        raise Unavailable(
            f"cannot connect to NATS at {where}: not running, or it refused the credentials"
            " (an embedded `session-ledger up` keeps them in its --data-dir)"
        ) from None


async def flush_to_server(nc: NATS, timeout: int = 10) -> None:
    """Return once the server has read everything sent on ``nc`` so far, subscriptions
    included (a process says it is ready only after this).

    ``nc.flush()`` alone does not prove that: nats-py (2.16) writes its PING straight to the
    socket while SUB commands wait for the client's flusher task, so the PING goes out first
    and its PONG can come back before the server has the SUBs. Seen as a query meeting "no
    responders" right after the sessions projection said it was ready (3 runs in 15 beside 3
    CPU hogs; the server's trace read PING, PONG, then SUB). The first flush also wakes the
    flusher, which runs before that PONG can be read; the second PING follows the SUBs on the
    wire, so its PONG answers for them (tests/integration/test_connection.py).
    """
    await nc.flush(timeout)
    await nc.flush(timeout)
