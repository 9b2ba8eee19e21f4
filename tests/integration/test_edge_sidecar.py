"""The forward-auth HTTP contract, driven by a real HTTP client against the real sidecar
(in-process and as the ``session-ledger edge`` command)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp

from consumers.edge.sidecar import run_edge
from ledger.client import LedgerClient
from ledger.streaming.embedded import free_port
from tests.support.edge import broadcaster, report, running


async def test_forward_auth_contract(client: LedgerClient, settings_for: Any, capsys: Any) -> None:
    port = free_port()
    settings = settings_for(edge_listen=f"127.0.0.1:{port}")
    pair = await client.start_session("üser@example.com", scopes=["read", "write"], client_id="web")
    base = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {pair.access_token}"}
    async with broadcaster(settings), running(run_edge, settings), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/auth", headers=bearer) as resp:
            assert resp.status == 200
            assert resp.headers["X-Auth-Subject"] == "%C3%BCser@example.com"  # percent-encoded
            assert resp.headers["X-Auth-Session"] == pair.sid
            assert resp.headers["X-Auth-Scopes"] == "read write"
            assert resp.headers["X-Auth-Client"] == "web"
            assert "Server" not in resp.headers
        async with http.post(f"{base}/auth/api/v1/orders?x=1", headers=bearer) as resp:  # Envoy prefix
            assert resp.status == 200
        async with http.get(f"{base}/auth") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api"'
        async with http.get(f"{base}/auth", headers={"Authorization": "Basic dTpw"}) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api", error="invalid_token"'
        async with http.get(f"{base}/elsewhere", headers=bearer) as resp:
            assert resp.status == 404
        async with http.get(f"{base}/healthz") as resp:
            health = await resp.json()
            assert resp.status == 200 and health["live"] and health["staleness_s"] < 2
        t0 = time.monotonic()
        await client.revoke_session(pair.sid)
        for _ in range(2000):
            async with http.get(f"{base}/auth", headers=bearer) as resp:
                if resp.status == 401:
                    break
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        report(
            capsys, f"session revoke->401 at the sidecar over HTTP {1000 * (time.monotonic() - t0):.1f} ms"
        )


async def test_oversized_requests_are_refused_and_the_sidecar_lives(
    client: LedgerClient, settings_for: Any
) -> None:
    port = free_port()
    settings = settings_for(edge_listen=f"127.0.0.1:{port}")
    pair = await client.start_session("henry")
    base = f"http://127.0.0.1:{port}"
    async with running(run_edge, settings), aiohttp.ClientSession() as http:
        huge = {"Authorization": "Bearer " + "a" * 300_000}
        async with http.get(f"{base}/auth", headers=huge) as resp:
            assert resp.status in (400, 431)
        many = {f"X-Junk-{i}": "x" for i in range(200)}
        async with http.get(f"{base}/auth", headers=many) as resp:
            assert resp.status in (400, 431)
        big_body = b"x" * 2_000_000
        async with http.post(
            f"{base}/auth", data=big_body, headers={"Authorization": f"Bearer {pair.access_token}"}
        ) as resp:
            assert resp.status in (200, 413)
        async with http.get(f"{base}/auth", headers={"Authorization": f"Bearer {pair.access_token}"}) as r:
            assert r.status == 200


async def test_edge_command_serves_and_stops_on_sigterm(client: LedgerClient, settings: Any) -> None:
    pair = await client.start_session("iris")
    port = free_port()
    cmd = [sys.executable, "-m", "session_ledger.cli", "edge", "--listen", f"127.0.0.1:{port}"]
    env = {**os.environ, "LEDGER_NATS_URL": settings.nats_url, "LEDGER_DATA_DIR": str(settings.data_dir)}
    proc = subprocess.Popen([*cmd, "--max-staleness", "5"], env=env, stdout=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            status = await _wait_healthy(http, f"http://127.0.0.1:{port}/healthz")
            assert status == 200
            headers = {"Authorization": f"Bearer {pair.access_token}"}
            async with http.get(f"http://127.0.0.1:{port}/auth", headers=headers) as resp:
                assert resp.status == 200 and resp.headers["X-Auth-Subject"] == "iris"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


async def _wait_healthy(http: aiohttp.ClientSession, url: str, limit: float = 20.0) -> int:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as resp:
                return resp.status
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("edge sidecar did not come up")
