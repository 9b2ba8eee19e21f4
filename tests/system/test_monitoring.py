"""Monitoring of a real ``session-ledger up``: its banner, its /metrics after real traffic
(parsed by Prometheus' own exposition parser), the embedded nats-server's monitoring port,
and its JSON log lines (component, ids, never a token)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger.client import LedgerClient
from ledger.domain.errors import TokenReused
from ledger.streaming.credentials import role_url
from ledger.streaming.embedded import free_port
from tests.support.processes import wait_ready

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    banner: list[str]
    nats: str
    metrics: str
    monitor: str
    edge: str
    data: Path
    stderr: Path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port, metrics, monitor, edge = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env |= {
        "LEDGER_EDGE_LISTEN": f"127.0.0.1:{edge}",
        "LEDGER_GRACE_WINDOW": "0",
        "LEDGER_LOG_FORMAT": "json",
    }
    stderr = tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "session_ledger.cli", "up", "--data-dir", str(tmp_path / "d"),
            "--nats-port", str(port), "--metrics-listen", f"127.0.0.1:{metrics}",
            "--nats-monitor-port", str(monitor)]  # fmt: skip
    with open(stderr, "w") as err:
        proc = subprocess.Popen(  # its own process group: the test can press "Ctrl-C" on it
            argv, stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True
        )
    try:
        banner = wait_ready(proc)
        urls = (
            f"nats://127.0.0.1:{port}",
            f"http://127.0.0.1:{metrics}/metrics",
            f"http://127.0.0.1:{monitor}",
        )
        yield Stack(proc, banner, *urls, f"http://127.0.0.1:{edge}", tmp_path / "d", stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback, our own server)
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def http_status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


async def traffic(stack: Stack) -> dict[str, str]:
    """Start, rotate, replay a superseded token (reuse: grace window 0), log out, revoke a user."""
    url = role_url(stack.nats, stack.data, "app")
    async with await LedgerClient.connect(url) as client:
        stolen = await client.start_session("alice", client_id="web")
        await client.rotate(stolen.refresh_token)
        with pytest.raises(TokenReused):
            await client.rotate(stolen.refresh_token)
        other = await client.start_session("bob", client_id="web")
        assert http_status(f"{stack.edge}/auth", other.access_token) == 200
        assert http_status(f"{stack.edge}/auth", "not-a-token") == 401
        await client.logout(other.refresh_token)
        await client.start_session("carol")
        await client.revoke_user("carol", reason="password_change")
    return {"refresh": stolen.refresh_token, "access": stolen.access_token, "sid": stolen.sid}


def poll(url: str, ready: object, limit: float = 60) -> Samples:
    """Scrape until ``ready(samples)`` holds (the projections and the edge follow asynchronously)."""
    deadline = time.monotonic() + limit
    samples = scrape(url)
    while not ready(samples) and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.2)
        samples = scrape(url)
    return samples


def test_up_metrics_move_with_real_traffic(stack: Stack) -> None:
    assert f"metrics          {stack.metrics}\n" in stack.banner
    assert f"nats monitor     {stack.monitor}\n" in stack.banner
    before = scrape(stack.metrics)
    for component in ("ledger-service", "sessions", "analytics", "broadcast", "edge"):
        assert value(before, "ledger_component_up", component=component) == 1.0
    secrets = asyncio.run(traffic(stack))

    def settled(s: Samples) -> bool:
        return (
            value(s, "ledger_broadcast_notices_total", kind="user") >= 1
            and value(s, "ledger_edge_notices_applied_total", kind="user") >= 1
            and value(s, "ledger_projection_lag_events", projection="sessions") == 0
            and value(s, "ledger_projection_applied_seq", projection="analytics") >= 9
        )

    after = poll(stack.metrics, settled)
    assert settled(after), {k: v for k, v in after.items() if k[0].startswith("ledger_")}
    assert value(after, "ledger_commands_total", command="rotate", outcome="ok") == 1
    assert value(after, "ledger_commands_total", command="rotate", outcome="token_reused") == 1
    assert value(after, "ledger_commands_total", command="start", outcome="ok") == 3
    assert value(after, "ledger_reuse_detections_total", policy="family") == 1
    assert value(after, "ledger_revocations_total", kind="session", reason="reuse") == 1
    assert value(after, "ledger_revocations_total", kind="session", reason="logout") == 1
    assert value(after, "ledger_revocations_total", kind="user", reason="password_change") == 1
    # reuse detected + its revocation + the logout; one user notice
    assert value(after, "ledger_broadcast_notices_total", kind="session") == 3
    assert value(after, "ledger_broadcast_delay_seconds_count") == 4
    assert value(after, "ledger_edge_revocation_delay_seconds_count") >= 1
    edge_id = next(dict(k[1])["verifier"] for k in after if k[0] == "ledger_edge_serving")
    assert value(after, "ledger_edge_verify_total", verifier=edge_id, result="accepted") == 1
    assert value(after, "ledger_edge_verify_total", verifier=edge_id, result="malformed") == 1
    assert value(after, "ledger_edge_serving", verifier=edge_id) == 1
    assert 0 <= value(after, "ledger_edge_staleness_seconds", verifier=edge_id) < 30
    assert value(after, "ledger_http_requests_total", server="edge", route="/auth", status="200") == 1
    assert value(after, "ledger_command_duration_seconds_count", command="rotate") == 2
    assert value(after, "ledger_projection_events_total", projection="sessions") >= 9
    text = urllib.request.urlopen(stack.metrics, timeout=5).read().decode()  # noqa: S310
    assert not any(secret in text for secret in secrets.values())  # ids and tokens never in labels

    varz = json.loads(urllib.request.urlopen(f"{stack.monitor}/varz", timeout=5).read())  # noqa: S310
    assert varz["server_name"] == "ledger-nats" and varz["connections"] >= 5

    os.killpg(stack.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    stack.proc.communicate(timeout=30)
    assert stack.proc.returncode == 130
    lines = [json.loads(line) for line in stack.stderr.read_text().splitlines() if line.strip()]
    reuse = [x for x in lines if x["msg"].startswith("reuse detected")]
    assert reuse and reuse[0]["component"] == "ledger-service" and reuse[0]["sid"] == secrets["sid"]
    assert reuse[0]["event_id"] and reuse[0]["event_type"] == "ReuseDetected"
    [warning] = [x for x in lines if x["level"] == "WARNING" and "reuse" in str(x["msg"])]
    assert warning["sid"] == secrets["sid"] and warning["logger"] == "ledger.service.handlers"
    assert {x["component"] for x in lines} >= {"ledger-service", "sessions", "edge"}
    trouble = [x for x in lines if x["level"] in ("WARNING", "ERROR") and x is not warning]
    assert not trouble, trouble  # a clean stop: no consumer saw its server go away first
    log_text = stack.stderr.read_text()
    assert secrets["refresh"] not in log_text and secrets["access"] not in log_text
