"""The issue-14 commands as a person runs them: real CLI processes against a real ledger."""

from __future__ import annotations

import json

from ledger.config import Settings
from tests.support.services import ServiceRunner
from tests.system.test_cli import cli

UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


async def test_device_idempotency_step_up_and_self_service_through_the_cli(
    service: ServiceRunner, settings: Settings
) -> None:
    url = ["--nats-url", settings.nats_url, "--json"]
    device = ["--user-agent", UA, "--ip", "203.0.113.9", "--device-label", "Home PC"]
    start = ["session", "start", "--sub", "hana", "--acr", "aal1", "--amr", "pwd", *device, *url]
    code, out, _ = await cli(*start, "--idempotency-key", "cli-login-1")
    assert code == 0
    first = json.loads(out)
    code, out, _ = await cli(*start, "--idempotency-key", "cli-login-1")
    assert code == 0 and json.loads(out)["sid"] == first["sid"]
    code, out, _ = await cli(*start)
    other = json.loads(out)
    code, out, _ = await cli("session", "step-up", first["sid"], "--sub", "hana", "--acr", "aal2", *url)
    assert code == 0 and json.loads(out)["acr"] == "aal2"
    code, out, _ = await cli("session", "sign-out-others", "--sub", "hana", "--current", first["sid"], *url)
    assert code == 0 and json.loads(out)["kept_sid"] == first["sid"]
    code, _, err = await cli("session", "rotate", other["refresh_token"], *url)
    assert code == 1 and json.loads(err)["error"]["code"] == "session_revoked"
    code, _, err = await cli(
        "session", "revoke-own", first["sid"], "--sub", "ivan", "--current", first["sid"], *url
    )
    assert code == 1 and json.loads(err)["error"]["code"] == "not_found"
    code, _, err = await cli(*start[:-3], "--ip", "999.1.1.1", *url)
    assert code == 2 and "999.1.1.1" not in err
    code, out, _ = await cli("events", "tail", *url)
    assert code == 0 and "203.0.113.9" not in out and "Chrome/126" not in out
    assert '"ip_hint": "203.0.113.0/24"' in out and '"keep_sid"' in out
