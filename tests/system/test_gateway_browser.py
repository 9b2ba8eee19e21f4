"""A real headless Chromium against the gateway's cookie flow, the JS helper and the edge sidecar.

The application's origin (a loopback test server) serves the page, logs a user in through the
gateway's backend door (setting the HttpOnly cookie) and answers ``/api/me`` through the
forward-auth sidecar, as nginx ``auth_request`` would. The gateway is another origin of the same
site, reached with CORS. With a grace window of 0, the single-flight refresh across tabs is
what keeps the family at one generation: any second presentation would count as reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consumers.edge.sidecar import run_edge
from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.domain.events import ReuseDetected, TokenRotated
from ledger.streaming.embedded import free_port
from ledger.streaming.store import EventStore
from projections.sessions.runner import run_sessions
from tests.support.edge import broadcaster, running
from tests.support.gateway import Registry, gateway, gateway_config, write_registry
from tests.support.helpers import all_events

playwright = pytest.importorskip("playwright.async_api", reason="the playwright package is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
    ),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TABS = 4
COOKIE = "__Secure-ledger-rt"

PAGE = """<!doctype html><meta charset="utf-8"><title>app</title>
<script type="module">
import { createSession, SessionEnded } from "{gateway}/session-ledger.js";
window.session = createSession({ base: "{gateway}" });
window.ended = [];
session.onEnded((status) => ended.push(status));
window.apiStatus = async () => {
  const token = await session.accessToken();
  return (await fetch("/api/me", { headers: { Authorization: `Bearer ${token}` } })).status;
};
window.apiThroughHelper = async () => {
  try { return (await session.fetch("/api/me")).status; }
  catch (err) { return err instanceof SessionEnded ? `ended ${err.status}` : String(err); }
};
window.ready = true;
</script>"""

EVIL = """<!doctype html><meta charset="utf-8"><title>evil</title>
<form id="f" method="POST" action="{gateway}/session/refresh"><input name="x" value="1"></form>"""


def app_server(gateway_url: str, sidecar: str, registry: Registry) -> web.Application:
    """The application: page, login (its backend calls the gateway), API behind the sidecar."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("{gateway}", gateway_url), content_type="text/html")

    async def login(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http:
            body = {"sub": "alice", "client_id": "web", "scopes": ["read"]}
            auth = {"Authorization": aiohttp.encode_basic_auth("backend", registry.secrets["backend"])}
            async with http.post(f"{gateway_url}/backend/sessions", json=body, headers=auth) as res:
                assert res.status == 201
                pair = await res.json()
        response = web.json_response({"sid": pair["sid"]})
        response.set_cookie(
            COOKIE, pair["refresh_token"], path="/session", secure=True, httponly=True, samesite="Strict"
        )
        return response

    async def me(request: web.Request) -> web.Response:
        headers = {"Authorization": request.headers.get("Authorization", "")}
        async with aiohttp.ClientSession() as http, http.get(f"{sidecar}/auth", headers=headers) as res:
            return web.json_response({"sub": res.headers.get("X-Auth-Subject")}, status=res.status)

    app = web.Application()
    app.router.add_get("/session/app.html", page)
    app.router.add_post("/login", login)
    app.router.add_get("/api/me", me)
    return app


def evil_server(gateway_url: str) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=EVIL.replace("{gateway}", gateway_url), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright.async_playwright() as p:
        # Playwright gives each launch a fresh temporary profile (its --user-data-dir).
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            await b.close()


async def open_tab(context: Any, url: str) -> Any:
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_function("window.ready === true", timeout=30_000)
    return page


async def until(check: Any, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_tabs_refresh_once_csrf_is_refused_and_a_replayed_cookie_ends_every_tab(
    settings_for: Any, services: Any, store: EventStore, tmp_path: Path, browser: Any
) -> None:
    settings: Settings = settings_for(grace_window=timedelta(0), edge_listen=f"127.0.0.1:{free_port()}")
    await services.start(settings)  # strict: a second presentation of any token would be reuse
    registry = write_registry(tmp_path)
    app_port, evil_port = free_port(), free_port()
    app_origin = f"http://127.0.0.1:{app_port}"
    config = gateway_config(registry, cors_origins=(app_origin,), browser_client_id="web")
    async with (
        broadcaster(settings),
        running(run_edge, settings),
        gateway(settings, config) as gw,
        serving(app_server(gw, f"http://{settings.edge_listen}", registry), app_port),
        serving(evil_server(gw), evil_port) as evil,
    ):
        context = await browser.new_context()
        first = await open_tab(context, f"{app_origin}/session/app.html")
        sid = (await first.evaluate("fetch('/login', {method: 'POST'}).then(r => r.json())"))["sid"]
        cookie = next(c for c in await context.cookies() if c["name"] == COOKIE)
        assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == (
            True,
            True,
            "Strict",
            "/session",
        )
        generation0 = cookie["value"]
        tabs = [first, *[await open_tab(context, f"{app_origin}/session/app.html") for _ in range(TABS - 1)]]

        # every tab refreshes at the same moment: one refresh, one successor, shared by all
        at = await first.evaluate("Date.now() + 1500")
        script = "at => new Promise(r => setTimeout(r, at - Date.now())).then(() => session.refresh())"
        script += ".then(t => t.mark)"
        marks = await asyncio.gather(*(tab.evaluate(script, at) for tab in tabs))
        assert set(marks) == {f"{sid}.1"}, marks
        rotations = [r for r in await all_events(store) if getattr(r.event, "sid", None) == sid]
        assert [type(r.event) for r in rotations].count(TokenRotated) == 1
        assert not any(isinstance(r.event, ReuseDetected) for r in rotations)
        assert [await tab.evaluate("apiThroughHelper()") for tab in tabs] == [200] * TABS
        assert [await tab.evaluate("document.cookie") for tab in tabs] == [""] * TABS  # HttpOnly

        # CSRF: a cross-origin form post, a fetch without the custom header, a foreign origin's fetch
        before = await store.last_seq()
        evil_page = await context.new_page()  # same browser, so the victim's cookie would go along
        await evil_page.goto(evil)
        async with evil_page.expect_navigation() as navigation:
            await evil_page.evaluate("document.getElementById('f').submit()")
        assert (await navigation.value).status == 403
        bare = (
            f"fetch('{gw}/session/refresh', {{method: 'POST', credentials: 'include'}}).then(r => r.status)"
        )
        assert await first.evaluate(bare) == 403
        foreign = (
            f"fetch('{gw}/session/refresh', {{method: 'POST', credentials: 'include', "
            "headers: {'X-Session-Ledger': '1'}}).then(r => r.status, e => 'blocked')"
        )
        assert await evil_page.evaluate(foreign) == "blocked"  # the preflight is refused
        assert await store.last_seq() == before  # nothing rotated, nothing revoked

        # a stolen generation-0 cookie replayed from another browser context revokes the session
        thief = await browser.new_context()
        stolen = {**cookie, "value": generation0}
        await thief.add_cookies(
            [{k: stolen[k] for k in ("name", "value", "domain", "path", "httpOnly", "secure", "sameSite")}]
        )
        thief_tab = await open_tab(thief, f"{app_origin}/session/app.html")
        assert await thief_tab.evaluate("session.refresh().then(() => 'refreshed', e => e.status)") == 401
        assert any(isinstance(r.event, ReuseDetected) for r in await all_events(store))
        for tab in tabs:
            await until(lambda tab=tab: _status(tab, 401))  # the edge heard the revocation
        assert await first.evaluate("apiThroughHelper()") == "ended 401"  # and the refresh is refused
        await until(lambda: _ended_everywhere(tabs))
        await thief.close()
        await context.close()


async def _status(tab: Any, want: int) -> bool:
    return bool(await tab.evaluate("apiStatus()") == want)


async def _ended_everywhere(tabs: list[Any]) -> bool:
    return all(await asyncio.gather(*(tab.evaluate("ended.length > 0") for tab in tabs)))


async def test_the_helper_lists_my_devices_and_signs_out_the_others_from_the_browser(
    settings_for: Any, services: Any, tmp_path: Path, browser: Any
) -> None:
    """The self-service endpoints from a page of another origin (CORS preflight for the bearer
    header): the browser's session lists both devices, marks itself current, signs out the other,
    whose access token the sidecar then rejects, and keeps working itself."""
    settings: Settings = settings_for(edge_listen=f"127.0.0.1:{free_port()}")
    await services.start(settings)
    registry = write_registry(tmp_path)
    app_port = free_port()
    app_origin = f"http://127.0.0.1:{app_port}"
    config = gateway_config(registry, cors_origins=(app_origin,), browser_client_id="web")
    sidecar = f"http://{settings.edge_listen}"
    async with (
        broadcaster(settings),
        running(run_sessions, settings),
        running(run_edge, settings),
        gateway(settings, config) as gw,
        serving(app_server(gw, sidecar, registry), app_port),
        await LedgerClient.connect(settings.nats_url) as ledger,
        aiohttp.ClientSession() as http,
    ):
        phone = await ledger.start_session("alice", client_id="web")  # another device
        context = await browser.new_context()
        tab = await open_tab(context, f"{app_origin}/session/app.html")
        sid = (await tab.evaluate("fetch('/login', {method: 'POST'}).then(r => r.json())"))["sid"]
        count = "session.devices().then(d => d.length, e => `failed ${e.status} ${e.error}`)"

        async def listed(n: int) -> bool:
            return bool(await tab.evaluate(count) == n)

        await until(lambda: listed(2))
        current = await tab.evaluate("session.devices().then(d => d.filter(s => s.current).map(s => s.sid))")
        assert current == [sid]
        assert (await tab.evaluate("session.signOutOthers()"))["kept_sid"] == sid

        async def phone_rejected() -> bool:
            headers = {"Authorization": f"Bearer {phone.access_token}"}
            async with http.get(f"{sidecar}/auth", headers=headers) as res:
                return res.status == 401

        await until(phone_rejected)
        await until(lambda: listed(1))
        assert await tab.evaluate("apiThroughHelper()") == 200
        await context.close()
