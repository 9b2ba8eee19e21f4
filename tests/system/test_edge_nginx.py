"""A real nginx (Debian package) in front of a tiny upstream, asking the sidecar through
``auth_request``: a valid token reaches the upstream with the identity headers, a revoked
one gets 401, a token below a location's required level gets the RFC 9470 challenge.
Skipped, with the reason shown, where nginx is not installed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consumers.edge.sidecar import run_edge
from ledger.client import LedgerClient
from ledger.streaming.embedded import free_port
from tests.support.edge import broadcaster, report, running

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx not installed (apt-get install -y nginx-light); .ci/run installs it"
)

NGINX_CONF = """
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
    location = /_auth {{
      internal;
      proxy_pass http://127.0.0.1:{sidecar}/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Required-Acr $ledger_acr;          # the location's level, never the client's
      proxy_set_header X-Required-Max-Age $ledger_max_age;
    }}
    location /admin/ {{
      set $ledger_acr "aal2 aal3";                          # RFC 9470 step-up for this location
      set $ledger_max_age "600";
      auth_request /_auth;
      auth_request_set $auth_sub $upstream_http_x_auth_subject;
      auth_request_set $auth_sid $upstream_http_x_auth_session;
      auth_request_set $auth_acr $upstream_http_x_auth_acr;
      auth_request_set $auth_challenge $upstream_http_www_authenticate;
      add_header WWW-Authenticate $auth_challenge always;
      proxy_set_header X-Auth-Subject $auth_sub;
      proxy_set_header X-Auth-Session $auth_sid;
      proxy_set_header X-Auth-Acr $auth_acr;
      proxy_pass http://127.0.0.1:{upstream};
    }}
    location / {{
      set $ledger_acr "";                                   # no level required here
      set $ledger_max_age "";
      auth_request /_auth;
      auth_request_set $auth_sub $upstream_http_x_auth_subject;
      auth_request_set $auth_sid $upstream_http_x_auth_session;
      auth_request_set $auth_scopes $upstream_http_x_auth_scopes;
      auth_request_set $auth_acr $upstream_http_x_auth_acr;
      auth_request_set $auth_challenge $upstream_http_www_authenticate;
      add_header WWW-Authenticate $auth_challenge always;
      proxy_set_header X-Auth-Subject $auth_sub;
      proxy_set_header X-Auth-Session $auth_sid;
      proxy_set_header X-Auth-Scopes $auth_scopes;
      proxy_set_header X-Auth-Acr $auth_acr;
      proxy_pass http://127.0.0.1:{upstream};
    }}
  }}
}}
"""


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {"port": free_port(), "sidecar": free_port(), "upstream": free_port()}
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, **ports))
    assert NGINX is not None
    log = open(tmp / "stdout.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        yield ports
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
async def upstream(nginx: dict[str, int]) -> AsyncIterator[None]:
    async def echo(request: web.Request) -> web.Response:
        sub, sid = request.headers.get("X-Auth-Subject", ""), request.headers.get("X-Auth-Session", "")
        acr = request.headers.get("X-Auth-Acr", "")
        return web.Response(text=f"upstream ok sub={sub} sid={sid}", headers={"X-Upstream-Saw-Acr": acr})

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", nginx["upstream"]).start()
    yield
    await runner.cleanup()


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, str, str]:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.text(), resp.headers.get("WWW-Authenticate", "")


async def _wait_listening(http: aiohttp.ClientSession, url: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            async with http.get(url):
                return
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listening at {url}")


async def test_nginx_auth_request_lets_valid_through_and_stops_revoked(
    client: LedgerClient, settings_for: Any, nginx: dict[str, int], upstream: None, capsys: Any
) -> None:
    settings = settings_for(edge_listen=f"127.0.0.1:{nginx['sidecar']}")
    pair = await client.start_session("lena", scopes=["read"])
    other = await client.start_session("mike")
    url = f"http://127.0.0.1:{nginx['port']}/api/orders"
    async with broadcaster(settings), running(run_edge, settings), aiohttp.ClientSession() as http:
        await _wait_listening(http, url)
        status, body, _ = await _get(http, url, pair.access_token)
        assert (status, body) == (200, f"upstream ok sub=lena sid={pair.sid}")
        status, _, challenge = await _get(http, url, "forged.token.value")
        assert status == 401 and 'error="invalid_token"' in challenge
        t0 = time.monotonic()
        await client.revoke_session(pair.sid)
        for _ in range(2000):
            status, _, challenge = await _get(http, url, pair.access_token)
            if status == 401:
                break
        assert status == 401 and 'error="invalid_token"' in challenge
        report(
            capsys, f"session revoke->401 through nginx auth_request {1000 * (time.monotonic() - t0):.1f} ms"
        )
        status, body, _ = await _get(http, url, other.access_token)
        assert (status, body) == (200, f"upstream ok sub=mike sid={other.sid}")


async def test_a_client_cannot_claim_an_authentication_level_through_nginx(
    client: LedgerClient, settings_for: Any, nginx: dict[str, int], upstream: None
) -> None:
    """Attack: a client sends its own ``X-Auth-Acr: aal3``. The upstream sees only what the
    token says (the sidecar always answers the header, empty without a context)."""
    settings = settings_for(edge_listen=f"127.0.0.1:{nginx['sidecar']}")
    stepped = await client.start_session("nora", acr="aal1")
    plain = await client.start_session("nora")
    url = f"http://127.0.0.1:{nginx['port']}/api/orders"
    async with broadcaster(settings), running(run_edge, settings), aiohttp.ClientSession() as http:
        await _wait_listening(http, url)
        for pair, want in ((stepped, "aal1"), (plain, "")):
            forged = {"Authorization": f"Bearer {pair.access_token}", "X-Auth-Acr": "aal3"}
            async with http.get(url, headers=forged) as resp:
                assert resp.status == 200 and resp.headers.get("X-Upstream-Saw-Acr") == want


async def test_a_location_requiring_a_level_answers_the_step_up_challenge_through_nginx(
    client: LedgerClient, settings_for: Any, nginx: dict[str, int], upstream: None
) -> None:
    """``/admin/`` sets ``X-Required-Acr: aal2 aal3`` and a max age of 600 s for the sidecar: an
    aal1 token gets RFC 9470's 401, the stepped-up successor passes. A client's own
    ``X-Required-Acr`` never reaches the sidecar (nginx sets the header from the location)."""
    settings = settings_for(edge_listen=f"127.0.0.1:{nginx['sidecar']}")
    now = datetime.now(UTC)
    pair = await client.start_session("olga", acr="aal1", amr=["pwd"], auth_time=now)
    admin, api = (f"http://127.0.0.1:{nginx['port']}{p}" for p in ("/admin/users", "/api/orders"))
    async with broadcaster(settings), running(run_edge, settings), aiohttp.ClientSession() as http:
        await _wait_listening(http, admin)
        status, _, challenge = await _get(http, admin, pair.access_token)
        assert status == 401, challenge
        assert 'error="insufficient_user_authentication"' in challenge
        assert 'acr_values="aal2 aal3"' in challenge and 'max_age="600"' in challenge
        lowered = {"Authorization": f"Bearer {pair.access_token}", "X-Required-Acr": "aal1"}
        async with http.get(admin, headers=lowered) as resp:  # the client cannot lower the level
            assert resp.status == 401
        raised = {"Authorization": f"Bearer {pair.access_token}", "X-Required-Acr": "aal9"}
        async with http.get(api, headers=raised) as resp:  # nor does its header reach the sidecar
            assert resp.status == 200
        await client.step_up(
            pair.sid, sub="olga", acr="aal2", amr=["pwd", "otp"], auth_time=datetime.now(UTC)
        )
        stepped = await client.rotate(pair.refresh_token)
        async with http.get(admin, headers={"Authorization": f"Bearer {stepped.access_token}"}) as resp:
            assert resp.status == 200 and resp.headers.get("X-Upstream-Saw-Acr") == "aal2"
