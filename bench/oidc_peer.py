"""node-oidc-provider 9 (in-memory adapter) as a bench peer: bench/peers/oidc/server.js.

Started as a child process on a free loopback port and stopped by its PID. Chains are
seeded through the provider's own models (``POST /bench/seed?n=N``, loopback only); a
rotation is ``POST /token grant_type=refresh_token`` with rotation on, answered with the
next refresh token and an ES256 JWT access token, like the ledger's ``rotate``.

Optional: needs ``node`` and ``cd bench/peers/oidc && npm ci``; ``skip_reason()`` says
what is missing and the bench then skips the comparison with that note.

The driver is a minimal HTTP/1.1 keep-alive client on asyncio streams, not httpx: measured
against this server on the bench machine, httpx spent 2.3-6.9 ms of the bench process's CPU
per request (so the peer "did" 60-240 rotations/s), this client 0.09-0.14 ms (600-1,900/s);
the ledger's own client spends 0.15-0.45 ms. The figure is the server's, not the driver's.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

PEER_DIR = Path(__file__).parent / "peers" / "oidc"
SETUP = "cd bench/peers/oidc && npm ci"
CLIENT_ID = "bench"


def skip_reason() -> str | None:
    """Why the peer cannot run here (None: it can)."""
    if shutil.which("node") is None:
        return "node not found on PATH; install Node.js 20+ and run `" + SETUP + "`"
    manifest = PEER_DIR / "node_modules" / "oidc-provider" / "package.json"
    if not manifest.is_file():
        return f"oidc-provider is not installed; run `{SETUP}`"
    version = str(json.loads(manifest.read_text()).get("version", "?"))
    if not version.startswith("9."):
        return f"oidc-provider {version} installed, the comparison is with 9.x; run `{SETUP}`"
    return None


def version() -> str:
    manifest = PEER_DIR / "node_modules" / "oidc-provider" / "package.json"
    return str(json.loads(manifest.read_text())["version"])


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Http1:
    """Keep-alive HTTP/1.1 POSTs to one loopback port; one connection per request in flight."""

    port: int
    timeout: float = 10.0
    idle: list[Conn] = field(default_factory=list)

    async def post(self, target: str, form: dict[str, str] | None = None) -> tuple[int, Any]:
        body = urlencode(form or {}).encode()
        conn = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        try:
            status, data, keep = await asyncio.wait_for(self._exchange(conn, target, body), self.timeout)
        except BaseException:
            conn[1].close()
            raise
        if keep:
            self.idle.append(conn)
        else:
            conn[1].close()
        return status, json.loads(data) if data else None

    @staticmethod
    async def _exchange(conn: Conn, target: str, body: bytes) -> tuple[int, bytes, bool]:
        reader, writer = conn
        head = (
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if "content-length" not in headers:
            raise RuntimeError(f"answer without Content-Length (status {status}): {headers}")
        data = await reader.readexactly(int(headers["content-length"]))
        return status, data, headers.get("connection") != "close"

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class OidcPeer:
    url: str
    pid: int
    http: Http1

    async def seed(self, n: int) -> list[str]:
        """``n`` fresh chains (a grant and a refresh token each); their first tokens."""
        status, tokens = await self.http.post(f"/bench/seed?n={n}")
        if status != 200 or not isinstance(tokens, list) or len(tokens) != n:
            raise RuntimeError(f"seeding the oidc-provider peer failed ({status})")
        return [str(t) for t in tokens]

    async def rotate(self, token: str) -> str:
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": CLIENT_ID}
        status, body = await self.http.post("/token", form)
        if status != 200 or "access_token" not in body:
            raise RuntimeError(f"oidc-provider answered {status}: {str(body)[:200]}")
        successor: str = body["refresh_token"]
        return successor


@asynccontextmanager
async def started(startup_s: float = 20.0) -> AsyncIterator[OidcPeer]:
    """The peer server as a child process; always stopped (SIGTERM, then SIGKILL) by its PID."""
    proc = subprocess.Popen(
        ["node", "server.js"],
        cwd=PEER_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PORT": "0"},
    )
    try:
        port = _read_port(proc, startup_s)
        http = Http1(port)
        try:
            yield OidcPeer(f"http://127.0.0.1:{port}", proc.pid, http)
        finally:
            http.close()
    finally:
        _stop(proc)


def _read_port(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The server prints ``{"port": N}`` once it listens."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            return int(json.loads(line)["port"])
        if proc.poll() is not None:
            break
    raise RuntimeError(f"the oidc-provider peer did not start (exit {proc.poll()}); try `{SETUP}`")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()
