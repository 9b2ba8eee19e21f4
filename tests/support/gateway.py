"""Run HTTP gateways in the test's event loop, with a client registry of known secrets."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.gateway.app import run_gateway
from consumers.gateway.clients import hash_secret, new_secret
from consumers.gateway.settings import GatewaySettings
from ledger.config import Settings
from ledger.streaming.embedded import free_port
from tests.support.edge import running

SECURITY_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Content-Security-Policy",
    "Cache-Control",
)


@dataclass(frozen=True)
class Registry:
    path: Path
    secrets: dict[str, str]  # client_id -> its secret (confidential clients)


def write_registry(tmp_path: Path) -> Registry:
    """``backend`` starts sessions for ``web`` and ``svc``; ``svc`` is a confidential client,
    ``web`` a public one, ``rs`` a resource server that may introspect, ``other`` a stranger."""
    secrets = {name: new_secret() for name in ("backend", "svc", "rs", "other")}
    clients: list[dict[str, Any]] = [
        {
            "client_id": "backend",
            "secret_hash": hash_secret(secrets["backend"]),
            "start_sessions_for": ["web", "svc"],
        },
        {"client_id": "svc", "secret_hash": hash_secret(secrets["svc"])},
        {"client_id": "rs", "secret_hash": hash_secret(secrets["rs"]), "introspect": True},
        {"client_id": "other", "secret_hash": hash_secret(secrets["other"])},
        {"client_id": "web"},
    ]
    path = tmp_path / "gateway-clients.json"
    path.write_text(json.dumps({"clients": clients}))
    return Registry(path, secrets)


def gateway_config(registry: Registry, **changes: Any) -> GatewaySettings:
    base: dict[str, Any] = {"listen": f"127.0.0.1:{free_port()}", "clients_file": registry.path}
    base.update(changes)
    return GatewaySettings(**base)


def window_start_clock(window_s: float) -> Callable[[], float]:
    """Real time moved to just after the start of a rate window, so that a test's requests
    never straddle two windows (which would reset the counts) however slow the machine is."""
    now = time.time()
    offset = (window_s - now % window_s) + 1.0
    return lambda: time.time() + offset


@contextlib.asynccontextmanager
async def gateway(
    settings: Settings, config: GatewaySettings, clock: Callable[[], float] = time.time
) -> AsyncIterator[str]:
    """A running gateway; yields its base URL."""
    runner = functools.partial(run_gateway, config=config, clock=clock)
    functools.update_wrapper(runner, run_gateway)
    async with running(runner, settings):  # type: ignore[arg-type]
        yield f"http://{config.listen}"
