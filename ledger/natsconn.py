"""One way to connect to NATS: bounded first connect, endless reconnects afterwards."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client as NATS

from ledger.errors import Unavailable

log = logging.getLogger("ledger.nats")


async def _quiet_error(exc: Exception) -> None:
    log.debug("nats: %s: %s", type(exc).__name__, exc)


async def connect(url: str, name: str, *, deadline: float = 10.0, **options: Any) -> NATS:
    """Connect within ``deadline`` seconds or raise ``Unavailable``; then reconnect forever.

    nats-py treats ``max_reconnect_attempts=-1`` as "retry the first connect forever"
    too, so the deadline bounds it here.
    """
    options.setdefault("max_reconnect_attempts", -1)
    options.setdefault("reconnect_time_wait", 0.25)
    options.setdefault("connect_timeout", 2)
    options.setdefault("error_cb", _quiet_error)
    try:
        return await asyncio.wait_for(nats.connect(url, name=name, **options), deadline)
    except (TimeoutError, OSError, nats.errors.Error):
        raise Unavailable(f"cannot connect to NATS at {url}") from None
