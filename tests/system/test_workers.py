"""``session-ledger service --workers N``: real processes, a real nats-server, real metrics.

Both workers answer commands (each one's own Prometheus endpoint counts them, read with
Prometheus' own exposition parser); a killed worker is restarted and serves again; SIGTERM
stops the supervisor and every worker it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger.client import LedgerClient
from ledger.streaming.embedded import NatsServer, free_port

ROTATIONS = 192  # 16 chains of 12


class Output:
    """Everything the supervisor and its workers print, read by a thread (so the pipe never
    fills and a wait has a real deadline, whatever the processes do)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.lines: list[str] = []
        self._stream = proc.stdout
        self._read = threading.Thread(target=self._pump, daemon=True)
        self._read.start()

    def _pump(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def until(self, done: str, count: int, limit: float = 120) -> list[str]:
        """The lines so far once ``count`` of them (from the start) begin with ``done``."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and sum(x.startswith(done) for x in self.lines) < count:
            if not self._read.is_alive():
                break
            time.sleep(0.05)
        lines = list(self.lines)
        assert sum(x.startswith(done) for x in lines) >= count, "".join(lines)
        return lines


def _rotations_served(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as res:
        text = res.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "ledger_commands"
        for sample in family.samples
        if sample.name == "ledger_commands_total" and sample.labels.get("command") == "rotate"
    )


async def _rotate_many(url: str) -> int:
    async with await LedgerClient.connect(url) as client:
        pairs = await asyncio.gather(*(client.start_session(f"w{i}") for i in range(16)))

        async def chain(i: int) -> int:
            token = pairs[i].refresh_token
            for _ in range(ROTATIONS // 16):
                token = (await client.rotate(token)).refresh_token
            return ROTATIONS // 16

        return sum(await asyncio.gather(*(chain(i) for i in range(16))))


def _supervisor(url: str, data_dir: Path, metrics: int | None = None) -> subprocess.Popen[str]:
    keep = "LEDGER_REQUEST_TIMEOUT"  # the tests' patience on a busy machine
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_") or k == keep}
    env["LEDGER_NATS_URL"] = url
    command = [sys.executable, "-m", "session_ledger.cli", "service", "--workers", "2",
               "--data-dir", str(data_dir)]  # fmt: skip
    if metrics is not None:
        command += ["--metrics-listen", f"127.0.0.1:{metrics}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def _worker_pids(lines: list[str]) -> list[int]:
    started = next(x for x in lines if "2 workers" in x)
    return [int(p) for p in re.findall(r"\d+", started.split("pids")[1])]


def _gone(pids: list[int], limit: float = 60) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


def _stop(proc: subprocess.Popen[str], pids: list[int]) -> None:
    """After a failure: the supervisor and every worker it said it started, by PID, and only
    while that PID is still that worker (its environment names this supervisor)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    mark = f"LEDGER_SUPERVISOR_PID={proc.pid}".encode()
    for pid in pids:
        with contextlib.suppress(OSError):
            if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(300)  # two worker starts, a restart, 384 rotations: slow on a busy machine
def test_two_workers_share_the_commands_restart_and_stop(nats_server: NatsServer, tmp_path: Path) -> None:
    metrics = free_port()
    while not _free(metrics + 1):
        metrics = free_port()
    proc = _supervisor(nats_server.url, tmp_path / "d", metrics)
    out, pids = Output(proc), list[int]()
    try:
        pids = _worker_pids(out.until("ready:", 2))
        assert len(pids) == 2 and proc.pid not in pids
        assert asyncio.run(_rotate_many(nats_server.url)) == ROTATIONS
        served = [_rotations_served(metrics), _rotations_served(metrics + 1)]
        assert sum(served) == ROTATIONS and all(n > 0 for n in served), served  # both answered

        os.kill(pids[1], signal.SIGKILL)  # a worker this test's supervisor started
        restarted = next(x for x in out.until("ready:", 3) if "restarted" in x)
        new_pid = int(re.findall(r"pid (\d+)", restarted)[0])
        assert new_pid not in pids
        pids.append(new_pid)
        assert asyncio.run(_rotate_many(nats_server.url)) == ROTATIONS
        assert _rotations_served(metrics + 1) > 0  # the new worker serves on its port again

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, "".join(out.lines)
        assert _gone(pids, limit=1)  # reaped by the supervisor before it exited
    finally:
        _stop(proc, pids)


@pytest.mark.timeout(300)
def test_workers_end_with_a_killed_supervisor(nats_server: NatsServer, tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no chance to stop its workers: they notice and stop."""
    proc = _supervisor(nats_server.url, tmp_path / "d")
    out, pids = Output(proc), list[int]()
    try:
        pids = _worker_pids(out.until("ready:", 2))
        proc.kill()
        proc.wait()
        assert _gone(pids), "orphaned workers still running"
    finally:
        _stop(proc, pids)


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
