"""The CLI as a person uses it: real processes, JSON output, documented exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.streaming.credentials import role_url
from ledger.streaming.embedded import free_port
from tests.support.edge import broadcaster, verifier
from tests.support.processes import wait_ready
from tests.support.services import ServiceRunner


async def cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "session_ledger.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_session_lifecycle_through_the_cli(service: ServiceRunner, settings: Settings) -> None:
    url = ["--nats-url", settings.nats_url]
    code, out, _ = await cli("session", "start", "--sub", "alice", "--scope", "read", "--json", *url)
    assert code == 0
    pair = json.loads(out)
    assert pair["sub"] == "alice" and pair["generation"] == 0
    code, out, _ = await cli("session", "rotate", pair["refresh_token"], "--json", *url)
    assert code == 0 and json.loads(out)["generation"] == 1
    code, out, _ = await cli("session", "revoke", pair["sid"], *url)
    assert code == 0 and "revoked session" in out
    code, _, err = await cli("session", "rotate", pair["refresh_token"], "--json", *url)
    assert code == 1 and json.loads(err)["error"]["code"] == "session_revoked"
    code, out, _ = await cli("user", "revoke", "alice", "--reason", "password_change", *url)
    assert code == 0 and "all sessions of alice" in out
    code, out, _ = await cli("events", "tail", *url)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [e["type"] for e in lines][-4:] == [
        "SessionStarted",
        "TokenRotated",
        "SessionRevoked",
        "UserSessionsRevoked",
    ]
    assert all(pair["refresh_token"] not in line for line in out.splitlines())


async def test_a_session_whose_id_begins_with_a_dash_is_revoked_through_the_cli(
    client: LedgerClient, settings: Settings
) -> None:
    """One sid in 64 begins with ``-``; argparse would take it for an option (a failed CI run)."""
    url = ["--nats-url", settings.nats_url]
    for _ in range(2000):  # 64 expected; 2000 misses all with probability e^-31
        pair = await client.start_session("dash")
        if pair.sid.startswith("-"):
            break
    assert pair.sid.startswith("-")
    keep = await client.start_session("dash")
    own = ("session", "revoke-own", pair.sid, "--sub", "dash", "--current", keep.sid)
    code, out, err = await cli(*own, *url)
    assert code == 0 and pair.sid in out, err
    code, _, err = await cli("session", "rotate", pair.refresh_token, "--json", *url)
    assert code == 1 and json.loads(err)["error"]["code"] == "session_revoked"


async def test_exit_codes(service: ServiceRunner, settings: Settings) -> None:
    url = ["--nats-url", settings.nats_url]
    code, _, err = await cli("session", "rotate", "rt1.garbage", *url)
    assert code == 1 and "invalid_token" in err and "garbage" not in err
    code, _, err = await cli("session", "start", "--sub", "has space", *url)
    assert code == 2 and "bad_request" in err
    code, _, err = await cli(
        "session", "start", "--sub", "x", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--timeout", "1"
    )
    assert code == 3 and "unavailable" in err
    code, _, _ = await cli("session", "explode")
    assert code == 2  # argparse usage error


async def test_events_tail_follow_streams_new_events(client: LedgerClient, settings: Settings) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "session_ledger.cli",
        "events",
        "tail",
        "--follow",
        "--nats-url",
        settings.nats_url,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert first["type"] == "SigningKeyAdded" and "d" not in first["public_jwk"]
        pair = await client.start_session("follow-me")
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert line["type"] == "SessionStarted" and line["sid"] == pair.sid
    finally:
        proc.terminate()
        await proc.wait()


def test_up_runs_everything_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_EDGE_LISTEN"] = f"127.0.0.1:{free_port()}"  # never collide with a real 8081
    gateway_port = free_port()
    env["LEDGER_GATEWAY_LISTEN"] = f"127.0.0.1:{gateway_port}"  # nor with a real 8082
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "session_ledger.cli",
            "up",
            "--data-dir",
            str(tmp_path / "d"),
            "--nats-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        wait_ready(proc)

        async def use() -> str:
            url = role_url(f"nats://127.0.0.1:{port}", tmp_path / "d", "app")  # up's own users
            async with await LedgerClient.connect(url) as c:
                pair = await c.start_session("alice")
                return (await c.rotate(pair.refresh_token)).sub

        assert asyncio.run(use()) == "alice"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{gateway_port}/.well-known/jwks.json", timeout=10
        ) as res:
            assert len(json.load(res)["keys"]) == 1  # up's gateway serves, as its own NATS user
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "nats-server stopped" in rest
    assert (tmp_path / "d" / "keys" / "ledger.secret").exists()
    assert oct((tmp_path / "d" / "keys" / "ledger.secret").stat().st_mode & 0o777) == "0o600"


async def test_key_lifecycle_through_the_cli(
    service: ServiceRunner, settings: Settings, tmp_path: Path
) -> None:
    url = ["--nats-url", settings.nats_url, "--data-dir", str(settings.data_dir)]
    async with broadcaster(settings), verifier(settings) as edge:
        code, out, err = await cli("keys", "rotate", "--wait", "--json", *url, timeout=60)
        assert code == 0, err
        rotated = json.loads(out)
        assert rotated["active_after_s"] < 30 and "waiting for" in err  # acknowledged, not the 30 s delay
        assert rotated["kid"] in edge.keys.keys
    code, out, _ = await cli("keys", "list", "--json", *url)
    status = {k["kid"]: k["status"] for k in json.loads(out)["keys"]}
    assert status[rotated["kid"]] == "active" and sorted(status.values()) == ["active", "verifying"]
    code, out, _ = await cli("keys", "jwks", "--json", *url)
    assert {k["kid"] for k in json.loads(out)["keys"]} == set(status)
    code, _, err = await cli("keys", "rotate", "--root", *url)
    assert code == 2 and "root.pem" in err

    root_dir = ["--data-dir", str(tmp_path / "fresh")]
    code, out, _ = await cli("keys", "root-init", "--alg", "EdDSA", "--json", *root_dir)
    made = json.loads(out)
    assert code == 0 and made["alg"] == "EdDSA"
    assert oct(Path(made["private"]).stat().st_mode & 0o777) == "0o600"
    assert "d" not in json.loads(Path(made["public_jwk"]).read_text())  # the public half only
    code, _, err = await cli("keys", "root-init", *root_dir)
    assert code == 2 and "one root key" in err
