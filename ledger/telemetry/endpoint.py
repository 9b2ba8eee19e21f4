"""Serving the metrics: a ``/metrics`` HTTP endpoint, and pieces for an existing aiohttp app.

* ``serve_metrics("127.0.0.1:9464")``: a small server of its own (what ``up`` and every
  component command start when ``LEDGER_METRICS_LISTEN`` / ``--metrics-listen`` is set);
* ``add_metrics_route(app)``: ``GET /metrics`` on an app that already serves HTTP;
* ``http_metrics("gateway")``: a middleware counting requests by route and status;
* ``serve_app(app, "127.0.0.1:8081", "--listen")``: how every HTTP server of the project
  starts (the edge sidecar, the gateway, this endpoint): a clear error for a taken port.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ledger.domain.errors import ConfigError
from ledger.telemetry.metrics import HTTP_REQUESTS, HTTP_SECONDS, REGISTRY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OFF = ("", "off", "none", "0")


def metrics_enabled(listen: str | None) -> bool:
    return listen is not None and listen.strip().lower() not in OFF


async def metrics_handler(request: web.Request) -> web.Response:
    """The Prometheus text exposition of this process's registry."""
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_metrics_route(app: web.Application, path: str = "/metrics") -> None:
    app.router.add_get(path, metrics_handler)


def http_metrics(server: str) -> Middleware:
    """aiohttp middleware: ``ledger_http_requests_total{server,route,status}`` and a duration
    histogram. The route is the pattern (``/auth/{tail}``), never the path: bounded labels."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        began, status = time.perf_counter(), 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = _route_of(request)
            HTTP_REQUESTS.labels(server, route, str(status)).inc()
            HTTP_SECONDS.labels(server, route).observe(time.perf_counter() - began)

    return middleware


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def split_listen(listen: str, option: str = "--metrics-listen") -> tuple[str, int]:
    host, _, port = listen.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{option}: a listen address is host:port, got {listen!r}")
    return host.strip("[]"), int(port)


async def serve_app(app: web.Application, listen: str, option: str) -> tuple[web.AppRunner, str, int]:
    """Start ``app`` on ``host:port`` (access log off: requests carry tokens and cookies);
    (runner, host, bound port). A taken or unopenable port is a ConfigError naming ``option``."""
    host, port = split_listen(listen, option)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        taken = err.errno == errno.EADDRINUSE
        raise ConfigError(
            f"{host}:{port} "
            + ("is taken" if taken else f"cannot be opened: {err.strerror}")
            + f"; pass another {option}"
        ) from None
    return runner, host, _bound_port(site, port)


@dataclass
class MetricsServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_metrics(listen: str) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (port 0: any free one, see ``.url``)."""
    app = web.Application()
    add_metrics_route(app)
    runner, host, port = await serve_app(app, listen, "--metrics-listen (or off)")
    return MetricsServer(runner, host, port)


async def serve_if_enabled(listen: str | None) -> MetricsServer | None:
    return await serve_metrics(listen) if listen is not None and metrics_enabled(listen) else None


def _bound_port(site: web.TCPSite, asked: int) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; its sockets know the real port
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else asked
