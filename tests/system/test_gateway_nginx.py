"""The README's nginx block in front of a real gateway (Debian's nginx): the cookie flow works on
the application's origin, the backend door is closed to the public, the security headers pass
through, and the per-IP limit counts the real client (a spoofed X-Real-IP is overwritten).
Skipped, with the reason shown, where nginx is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.config import Settings
from ledger.streaming.embedded import free_port, port_answers
from tests.support.gateway import Registry, gateway, gateway_config, window_start_clock, write_registry

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx not installed (apt-get install -y nginx-light); .ci/run installs it"
)
README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "# session-ledger gateway behind nginx"

SERVER = """
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "the application"; }}
{locations}
  }}
}}
"""


def readme_block() -> str:
    blocks = re.findall(r"```nginx\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if b.startswith(MARKER))


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {"port": free_port(), "gateway": free_port()}
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    locations = readme_block().replace("127.0.0.1:8082", f"127.0.0.1:{ports['gateway']}")
    conf = tmp / "nginx.conf"
    conf.write_text(SERVER.format(tmp=tmp, port=ports["port"], locations=locations))
    assert NGINX is not None
    proc = subprocess.Popen([NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not port_answers("127.0.0.1", ports["port"]):
            assert proc.poll() is None, (tmp / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield ports
    finally:
        proc.terminate()
        proc.wait(10)


async def test_the_readme_nginx_block_serves_the_gateway_on_the_application_origin(
    settings: Settings, service: Any, proxy: dict[str, int], tmp_path: Path
) -> None:
    registry: Registry = write_registry(tmp_path)
    origin = f"http://127.0.0.1:{proxy['port']}"
    config = gateway_config(
        registry, listen=f"127.0.0.1:{proxy['gateway']}", public_url=origin, trusted_proxies=("127.0.0.1",),
        browser_client_id="web", rate_per_ip=8, rate_window="10m",
    )  # fmt: skip
    async with (
        gateway(settings, config, window_start_clock(600)) as direct,
        httpx.AsyncClient(timeout=10) as http,
    ):
        start = {"sub": "alice", "client_id": "web"}
        pair = (
            await http.post(
                f"{direct}/backend/sessions", json=start, auth=("backend", registry.secrets["backend"])
            )
        ).json()
        refresh = await http.post(
            f"{origin}/session/refresh",
            headers={
                "Cookie": f"__Secure-ledger-rt={pair['refresh_token']}",
                "X-Session-Ledger": "1",
                "Origin": origin,
            },
        )
        assert refresh.status_code == 200, refresh.text
        assert refresh.json()["generation"] == 1 and "refresh_token" not in refresh.json()
        cookie = refresh.headers["Set-Cookie"]
        for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/session"):
            assert attribute in cookie, cookie
        for header in ("Strict-Transport-Security", "Content-Security-Policy", "X-Content-Type-Options"):
            assert header in refresh.headers
        foreign = await http.post(
            f"{origin}/session/refresh", headers={"X-Session-Ledger": "1", "Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403
        closed = await http.post(
            f"{origin}/backend/sessions", json=start, auth=("backend", registry.secrets["backend"])
        )
        assert closed.status_code == 404  # the backend door is not public
        jwks = await http.get(f"{origin}/.well-known/jwks.json")
        assert jwks.status_code == 200 and jwks.json()["keys"]
        statuses = []
        for i in range(10):  # the client spoofs a new address each time; nginx overwrites it
            res = await http.post(f"{origin}/oauth/revoke", data={"token": "x", "client_id": "web"},
                                  headers={"X-Real-IP": f"10.0.0.{i}"})  # fmt: skip
            statuses.append(res.status_code)
        assert statuses == [200] * 6 + [429] * 4, statuses  # 8 per IP: start + refresh spent 2
