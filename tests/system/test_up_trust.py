"""Finding 4 (high) of the trust-boundaries review: the embedded ``up`` ran NATS with no
authentication, so any local process could publish a key and mint tokens. Now ``up`` runs
nats.conf's users with generated passwords; these tests attack it as a local process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.client import LedgerClient
from ledger.domain.errors import Unavailable
from ledger.domain.events import SigningKeyAdded
from ledger.service.keys import key_id, public_jwk
from ledger.streaming.connection import connect, flush_to_server
from ledger.streaming.credentials import FILE, role_url
from ledger.streaming.embedded import free_port, port_answers
from tests.support.processes import wait_ready

CLI = [sys.executable, "-m", "session_ledger.cli"]


@dataclass
class Up:
    proc: subprocess.Popen[str]
    port: int
    edge_port: int
    data: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def start_up(data: Path, port: int, edge_port: int, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "LEDGER_EDGE_LISTEN": f"127.0.0.1:{edge_port}",
        "LEDGER_GATEWAY_LISTEN": f"127.0.0.1:{free_port()}",
    }
    env.pop("LEDGER_NATS_URL", None)
    argv = [*CLI, "up", "--data-dir", str(data), "--nats-port", str(port), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    port, edge_port = free_port(), free_port()
    proc = start_up(tmp_path / "d", port, edge_port, "--only", "ledger-service", "--only", "broadcast",
                    "--only", "edge")  # fmt: skip
    try:
        wait_ready(proc)
        yield Up(proc, port, edge_port, tmp_path / "d")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)


async def test_finding4_no_local_process_gets_in_without_the_data_dirs_credentials(up: Up) -> None:
    for url in (up.url, f"nats://app:guess@127.0.0.1:{up.port}", f"nats://ledger:@127.0.0.1:{up.port}"):
        with pytest.raises(Unavailable):
            await connect(url, "intruder", deadline=1.5)
    for name in (FILE, "ledger-nats.conf"):  # the passwords: readable by the owner only
        assert stat.S_IMODE((up.data / name).stat().st_mode) == 0o600, name
    async with await LedgerClient.connect(role_url(up.url, up.data, "app")) as app:
        assert (await app.start_session("alice")).sub == "alice"  # the owner's tools work


async def test_finding4_a_forged_key_cannot_enter_and_its_tokens_are_refused(up: Up) -> None:
    """What the old ``up`` allowed: publish SigningKeyAdded with one's own key, mint sub=admin."""
    forger = ec.generate_private_key(ec.SECP256R1())
    kid = key_id(forger.public_key())
    event = SigningKeyAdded(event_id="f" * 32, occurred_at="2026-01-01T00:00:00Z", kid=kid, alg="ES256",
                            public_jwk=public_jwk(forger.public_key(), kid, "ES256"))  # fmt: skip
    errors: list[str] = []

    async def seen(exc: Exception) -> None:
        errors.append(str(exc))

    for user in ("app", "edge", "gateway", "projector", "analyst"):  # every role but the ledger itself
        nc = await connect(role_url(up.url, up.data, user), f"forger-{user}", error_cb=seen)
        try:
            await nc.publish(f"ledger.ev.k.{kid}.added", event.model_dump_json().encode())
            await flush_to_server(nc)
            await asyncio.sleep(0.2)
        finally:
            await nc.close()
    assert sum("permissions violation" in e.lower() for e in errors) == 5, errors
    now = int(time.time())
    claims = {"iss": "session-ledger", "aud": "api", "sub": "admin", "sid": "A" * 22, "jti": "j", "iat": now,
              "nbf": now, "exp": now + 300, "ssq": 1, "scope": "admin"}  # fmt: skip
    token = jwt.encode(claims, forger, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"})
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"http://127.0.0.1:{up.edge_port}/auth", headers=headers) as resp:
            assert resp.status == 401 and "X-Auth-Subject" not in resp.headers


def test_the_cli_uses_the_credentials_of_its_data_dir(up: Up) -> None:
    base = ["--nats-url", up.url, "--data-dir", str(up.data), "--json"]
    done = subprocess.run([*CLI, "session", "start", "--sub", "bob", *base], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sub"] == "bob"
    other = ["--nats-url", up.url, "--timeout", "1", "--data-dir", str(up.data.parent / "other")]
    elsewhere = subprocess.run([*CLI, "session", "start", "--sub", "bob", *other], capture_output=True,
                               text=True, timeout=60)  # fmt: skip
    assert elsewhere.returncode == 3 and "credentials" in elsewhere.stderr


def test_a_second_up_on_the_same_port_or_data_dir_refuses_and_the_first_serves_on(
    up: Up, tmp_path: Path
) -> None:
    same_port = start_up(tmp_path / "other", up.port, free_port())
    out, _ = same_port.communicate(timeout=60)
    assert same_port.returncode == 2 and "already answers" in out, out
    same_dir = start_up(up.data, free_port(), free_port())
    out, _ = same_dir.communicate(timeout=60)
    assert same_dir.returncode == 2 and "another `session-ledger up`" in out, out
    assert asyncio.run(_still_serves(up))


async def _still_serves(up: Up) -> bool:
    async with await LedgerClient.connect(role_url(up.url, up.data, "app")) as app:
        return (await app.start_session("carol")).sub == "carol"


def test_kill_9_of_up_takes_its_nats_server_down_too(tmp_path: Path) -> None:
    port = free_port()
    proc = start_up(tmp_path / "d", port, free_port(), "--only", "ledger-service")
    try:
        wait_ready(proc)
        assert port_answers("127.0.0.1", port)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while port_answers("127.0.0.1", port):
            assert time.monotonic() < deadline, "nats-server outlived its up"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
