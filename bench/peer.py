"""Peer comparison: the seed documents' naive refresh endpoint ("JWT + database row").

verify the old refresh JWT, SELECT its row, UPDATE the row to the new token, sign a new
pair; SQLite calls run in a worker thread as an async driver would, served over NATS
request/reply exactly like the ledger. Then: rotations/s, and how many of 20 concurrent
refreshes of one token succeed with *different* tokens (double-spends).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from pathlib import Path

import jwt
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.common import Report, Row, Stat, nats_server, service_processes, wait_for_service
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.errors import LedgerError
from ledger.streaming.connection import connect

SECRET = secrets.token_bytes(32)
FAMILIES = 64


class NaiveEndpoint:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS refresh (user TEXT, token TEXT PRIMARY KEY)")

    def issue(self, user: str) -> str:
        token = self._sign(user, "refresh")
        self.db.execute("INSERT INTO refresh VALUES (?, ?)", (user, token))
        return token

    def _sign(self, user: str, kind: str) -> str:
        claims = {"sub": user, "kind": kind, "jti": secrets.token_hex(8), "exp": int(time.time()) + 600}
        return jwt.encode(claims, SECRET, algorithm="HS256")

    async def refresh(self, msg: Msg) -> None:
        token = msg.data.decode()
        try:
            user = jwt.decode(token, SECRET, algorithms=["HS256"])["sub"]
        except jwt.PyJWTError:
            await msg.respond(b"")
            return
        row = await asyncio.to_thread(self._select, token)
        if row is None:
            await msg.respond(b"")
            return
        new_refresh, _access = self._sign(user, "refresh"), self._sign(user, "access")
        await asyncio.to_thread(self._update, token, new_refresh)
        await msg.respond(new_refresh.encode())

    def _select(self, token: str) -> tuple[str] | None:
        return self.db.execute("SELECT user FROM refresh WHERE token = ?", (token,)).fetchone()  # type: ignore[no-any-return]

    def _update(self, old: str, new: str) -> None:
        self.db.execute("UPDATE refresh SET token = ? WHERE token = ?", (new, old))


async def _naive(nc: NATS, path: Path, seconds: float, reps: int) -> tuple[Stat, int]:
    endpoint = NaiveEndpoint(path)
    tasks: set[asyncio.Task[None]] = set()

    async def concurrently(msg: Msg) -> None:  # like a web server: requests overlap
        task = asyncio.create_task(endpoint.refresh(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    sub = await nc.subscribe("naive.refresh", queue="naive", cb=concurrently)
    tokens = [endpoint.issue(f"u{i}") for i in range(FAMILIES)]

    async def rotate(i: int) -> None:
        reply = await nc.request("naive.refresh", tokens[i].encode(), timeout=5)
        tokens[i] = reply.data.decode()

    from bench.rotation import _throughput

    tp = Stat.of([await _throughput(rotate, FAMILIES, seconds) for _ in range(reps)])
    victim = endpoint.issue("victim")
    replies = await asyncio.gather(
        *(nc.request("naive.refresh", victim.encode(), timeout=5) for _ in range(20))
    )
    successes = {r.data for r in replies if r.data}
    await sub.unsubscribe()
    return tp, len(successes)


async def _ledger_double_spends(url: str) -> int:
    async with await LedgerClient.connect(url) as client:
        pair = await client.start_session("victim")
        results = await asyncio.gather(
            *(client.rotate(pair.refresh_token) for _ in range(20)), return_exceptions=True
        )
    return len({r.refresh_token for r in results if not isinstance(r, (LedgerError, BaseException))})


async def run(report: Report, reps: int, seconds: float, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    with nats_server() as server:
        nc = await connect(server.url, "bench-peer")
        naive_tp, naive_tokens = await _naive(nc, data_dir / "naive.sqlite", seconds, reps)
        await nc.drain()
        settings = Settings(nats_url=server.url, data_dir=data_dir / "ledger")
        with service_processes(settings, 1):
            await wait_for_service(server.url)
            from bench.rotation import FAMILIES as N
            from bench.rotation import _ledger_ops, _throughput

            async with await LedgerClient.connect(server.url) as client:
                rotate, _ = await _ledger_ops(client, N)
                ledger_tp = Stat.of([await _throughput(rotate, N, seconds) for _ in range(reps)])
            ledger_tokens = await _ledger_double_spends(server.url)
    report.add(Row("peer", "naive JWT+SQLite refresh, 64 in flight", "ops/s", naive_tp))
    report.add(Row("peer", "session-ledger rotate, 64 in flight", "ops/s", ledger_tp, "naive", naive_tp))
    report.add(
        Row(
            "peer",
            "naive: distinct successors of 20 refreshes",
            "tokens",
            Stat.of([naive_tokens]),
            note="1 is correct; more = double-spend",
        )
    )
    report.add(
        Row(
            "peer",
            "ledger: distinct successors of 20 refreshes",
            "tokens",
            Stat.of([ledger_tokens]),
            target="== 1",
            met=ledger_tokens == 1,
        )
    )
