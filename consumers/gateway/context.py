"""What every route shares: the ledger client, the key follower, the registry, the limiter."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from consumers.gateway.clients import Registry
from consumers.gateway.errors import OAuthError
from consumers.gateway.ratelimit import RateLimiter
from consumers.gateway.settings import GatewaySettings
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain import refresh
from ledger.domain.errors import TokenInvalid
from ledger.streaming.keys import KeyFollower


@dataclass
class Gateway:
    settings: Settings
    config: GatewaySettings
    ledger: LedgerClient
    keys: KeyFollower
    limiter: RateLimiter
    registry: Registry
    clock: Callable[[], float] = field(default=time.time)

    def client_ip(self, request: web.Request) -> str:
        """The peer; behind a trusted proxy, the address it names in ``X-Real-IP``."""
        peer = request.remote or "unknown"
        forwarded = request.headers.get("X-Real-IP", "")
        if peer in self.config.trusted_proxies and forwarded:
            try:
                return str(ipaddress.ip_address(forwarded.strip()))
            except ValueError:
                return peer
        return peer

    async def limit(self, request: web.Request, token: str | None) -> None:
        """Count the client IP, and check the session's count (the sid a refresh token names),
        at once: 429 + Retry-After when either is over its limit. The session's count grows only
        by what the ledger accepted (``accepted``), so forged tokens naming a sid spend nothing."""
        now, config, sid = self.clock(), self.config, sid_of(token)
        checks = [self.limiter.hit("ip", self.client_ip(request), config.rate_per_ip, now=now)]
        if sid is not None:
            checks.append(self.limiter.peek("session", sid, config.rate_per_session, now=now))
        waits = [w for w in await asyncio.gather(*checks) if w is not None]
        if waits:
            raise OAuthError(
                "rate_limited", "too many requests; retry later", status=429, retry_after=max(waits)
            )

    async def accepted(self, token: str) -> None:
        """The ledger accepted ``token``: count it against its session."""
        sid = sid_of(token)
        if sid is not None:
            await self.limiter.hit("session", sid, self.config.rate_per_session, now=self.clock())


def is_refresh_token(token: str) -> bool:
    return token.startswith(f"{refresh.PREFIX}.")


def sid_of(token: str | None) -> str | None:
    if not token or not is_refresh_token(token):
        return None
    try:
        return refresh.parse(token).sid
    except TokenInvalid:
        return None


GATEWAY = web.AppKey("gateway", Gateway)
