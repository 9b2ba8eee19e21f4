"""The cookie flow without a browser: what the answers carry (cookie attributes, expiry hints,
CORS), logout, an ended session, and the CSRF and preflight refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import SessionRevokedError
from ledger.streaming.store import EventStore
from tests.support.gateway import Registry, gateway, gateway_config, write_registry

APP = "https://app.example"
COOKIE = "__Secure-ledger-rt"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return write_registry(tmp_path)


@pytest.fixture
async def base(settings: Settings, service: Any, registry: Registry) -> AsyncIterator[str]:
    config = gateway_config(registry, cors_origins=(APP,), browser_client_id="web")
    async with gateway(settings, config) as url:
        yield url


def browser_headers(token: str | None, origin: str = APP) -> dict[str, str]:
    headers = {"X-Session-Ledger": "1", "Origin": origin, "Sec-Fetch-Site": "same-site"}
    if token is not None:
        headers["Cookie"] = f"{COOKIE}={token}"
    return headers


def cookie_value(res: httpx.Response) -> str:
    raw = res.headers["Set-Cookie"]
    return raw.split(";", 1)[0].split("=", 1)[1]


async def test_refresh_sets_the_successor_cookie_with_expiry_hints_and_logout_clears_it(
    base: str, client: LedgerClient
) -> None:
    pair = await client.start_session("alice", client_id="web", scopes=["read"])
    async with httpx.AsyncClient(timeout=10) as http:
        res = await http.post(f"{base}/session/refresh", headers=browser_headers(pair.refresh_token))
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["generation"] == 1 and 0 < body["expires_in"] <= 900 and "refresh_token" not in body
        assert body["session_expires_at"] == int(pair.session_expires_at.timestamp())
        assert body["idle_expires_at"] >= int(pair.refresh_expires_at.timestamp())  # the idle timeout slides
        cookie = res.headers["Set-Cookie"]
        for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/session", "Max-Age="):
            assert attribute in cookie, cookie
        assert res.headers["Access-Control-Allow-Origin"] == APP
        assert res.headers["Access-Control-Allow-Credentials"] == "true"
        successor = cookie_value(res)
        assert successor != pair.refresh_token and successor.startswith("rt1.")
        out = await http.post(f"{base}/session/logout", headers=browser_headers(successor))
        assert out.status_code == 200 and "Max-Age=0" in out.headers["Set-Cookie"]
        with pytest.raises(SessionRevokedError):
            await client.rotate(successor)
        ended = await http.post(f"{base}/session/refresh", headers=browser_headers(successor))
        assert ended.status_code == 401 and ended.json()["error"] == "login_required"
        assert "Max-Age=0" in ended.headers["Set-Cookie"]  # the dead cookie goes
        none = await http.post(f"{base}/session/refresh", headers=browser_headers(None))
        assert none.status_code == 401 and "Set-Cookie" not in none.headers


async def test_the_cookie_flow_serves_only_its_client_and_refuses_csrf(
    base: str, client: LedgerClient, store: EventStore
) -> None:
    other = await client.start_session("bob", client_id="svc")  # a confidential client's session
    mine = await client.start_session("carol", client_id="web")
    before = await store.last_seq()
    async with httpx.AsyncClient(timeout=10) as http:
        res = await http.post(f"{base}/session/refresh", headers=browser_headers(other.refresh_token))
        assert res.status_code == 401  # not the browser client's session
        refusals = [
            {"Cookie": f"{COOKIE}={mine.refresh_token}", "Origin": APP},  # no custom header (a form)
            {**browser_headers(mine.refresh_token), "X-Session-Ledger": "yes"},
            browser_headers(mine.refresh_token, origin="https://evil.example"),
            {**browser_headers(mine.refresh_token), "Sec-Fetch-Site": "cross-site"},
        ]
        for headers in refusals:
            res = await http.post(f"{base}/session/refresh", headers=headers)
            assert res.status_code == 403 and res.json()["error"] == "csrf_refused", headers
            res = await http.post(f"{base}/session/logout", headers=headers)
            assert res.status_code == 403, headers
        preflight = {
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-session-ledger",
        }
        ok = await http.options(f"{base}/session/refresh", headers=preflight)
        assert ok.status_code == 204 and ok.headers["Access-Control-Allow-Origin"] == APP
        assert "X-Session-Ledger" in ok.headers["Access-Control-Allow-Headers"]
        evil = await http.options(
            f"{base}/session/refresh", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert evil.status_code == 403 and "Access-Control-Allow-Origin" not in evil.headers
    assert await store.last_seq() == before  # nothing rotated, nothing revoked
    assert (await client.rotate(mine.refresh_token)).generation == 1
