"""Refreshes through the HTTP gateway beside the NATS path, same run, same service.

One ledger service process, one gateway process (``session-ledger gateway``), 64 sessions
refreshed in a loop each: through ``POST /oauth/token`` (a public client, form body, the
shared rate counters on: one counter round trip per request for the IP and one for the
session) and through ``LedgerClient.rotate`` straight over NATS. Then the same through the
gateway with a confidential client (HTTP Basic, salted SHA-256 check).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bench.common import Report, Row, Stat, nats_server, service_processes, wait_for_service
from bench.rotation import FAMILIES, _throughput
from consumers.gateway.clients import hash_secret, new_secret
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.embedded import free_port


def _registry(path: Path) -> str:
    secret = new_secret()
    clients = [{"client_id": "web"}, {"client_id": "svc", "secret_hash": hash_secret(secret)}]
    path.write_text(json.dumps({"clients": clients}))
    return secret


def _gateway(url: str, data_dir: Path, listen: str, clients: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LEDGER_GATEWAY_RATE_PER_IP": "100000000",
        "LEDGER_GATEWAY_RATE_PER_SESSION": "100000000",
    }
    argv = [sys.executable, "-m", "session_ledger.cli", "gateway", "--nats-url", url]
    argv += ["--data-dir", str(data_dir), "--listen", listen, "--clients", str(clients)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


async def _wait_http(base: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{base}/.well-known/jwks.json") as res:
                    if res.status == 200 and (await res.json())["keys"]:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway did not start")


async def _http_throughput(
    base: str, client_id: str, secret: str | None, tokens: list[str], seconds: float
) -> float:
    headers = {}
    if secret is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    connector = aiohttp.TCPConnector(limit=FAMILIES)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:

        async def refresh(i: int) -> None:
            form = {"grant_type": "refresh_token", "refresh_token": tokens[i]}
            if secret is None:
                form["client_id"] = client_id
            async with http.post(f"{base}/oauth/token", data=form) as res:
                body = await res.json()
                if res.status != 200:
                    raise RuntimeError(f"gateway refused a refresh: {body}")
                tokens[i] = body["refresh_token"]

        return await _throughput(refresh, FAMILIES, seconds)


async def _sessions(client: LedgerClient, client_id: str) -> list[str]:
    pairs = await asyncio.gather(
        *(client.start_session(f"b{i}", client_id=client_id) for i in range(FAMILIES))
    )
    return [p.refresh_token for p in pairs]


async def run(report: Report, reps: int, seconds: float, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = _registry(data_dir / "clients.json")
    listen = f"127.0.0.1:{free_port()}"
    with nats_server() as server:
        settings = Settings(nats_url=server.url, data_dir=data_dir / "ledger")
        with service_processes(settings, 1):
            await wait_for_service(server.url)
            gateway = _gateway(server.url, data_dir / "ledger", listen, data_dir / "clients.json")
            try:
                await _wait_http(f"http://{listen}")
                async with await LedgerClient.connect(server.url) as client:
                    web, svc = await _sessions(client, "web"), await _sessions(client, "svc")
                    nats_tokens = await _sessions(client, "web")

                    async def rotate(i: int) -> None:
                        nats_tokens[i] = (await client.rotate(nats_tokens[i])).refresh_token

                    nats, http_public, http_basic = [], [], []
                    for _ in range(reps):  # interleaved, so load from elsewhere hits all three alike
                        nats.append(await _throughput(rotate, FAMILIES, seconds))
                        http_public.append(
                            await _http_throughput(f"http://{listen}", "web", None, web, seconds)
                        )
                        http_basic.append(
                            await _http_throughput(f"http://{listen}", "svc", secret, svc, seconds)
                        )
            finally:
                gateway.terminate()
                gateway.wait(15)
    base = Stat.of(nats)
    report.add(Row("gateway", "LedgerClient.rotate over NATS, 64 in flight", "ops/s", base))
    report.add(Row("gateway", "POST /oauth/token public client, 64 in flight", "ops/s", Stat.of(http_public),
                   "NATS rotate", base))  # fmt: skip
    report.add(Row("gateway", "POST /oauth/token client_secret_basic", "ops/s", Stat.of(http_basic),
                   "NATS rotate", base))  # fmt: skip
