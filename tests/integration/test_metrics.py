"""Metrics against a real nats-server: reconnects counted, consumer lag from the server's own
pending count, and the /metrics endpoint read by Prometheus' exposition parser."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ledger.config import Settings
from ledger.domain.errors import ConfigError
from ledger.retry import poll_until
from ledger.streaming.connection import connect
from ledger.streaming.consumer import CheckpointedConsumer, ConsumerSpec, Delivery
from ledger.streaming.embedded import NatsServer
from ledger.telemetry.endpoint import add_metrics_route, http_metrics, serve_metrics
from ledger.telemetry.metrics import REGISTRY


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_reconnects_and_disconnects_are_counted(nats_server: NatsServer, settings: Settings) -> None:
    name = f"probe-{secrets.token_hex(4)}"
    nc = await connect(settings.nats_url, name)
    try:
        nats_server.stop()
        nats_server.start()  # same port, same store
        await poll_until(lambda: sample("ledger_nats_reconnects_total", connection=name) >= 1, deadline=30)
        assert sample("ledger_nats_disconnects_total", connection=name) >= 1
        assert nc.is_connected
    finally:
        await nc.close()


class Keep:
    def __init__(self) -> None:
        self.checkpoint = 0

    async def position(self) -> int:
        return self.checkpoint

    async def apply(self, batch: Sequence[Delivery]) -> int:
        self.checkpoint = batch[-1].seq
        return self.checkpoint


async def test_lag_is_what_the_server_still_holds_for_the_consumer(settings: Settings) -> None:
    nc = await connect(settings.nats_url, "test-lag")
    try:
        js = nc.jetstream()
        await js.add_stream(name="LAGGY", subjects=["laggy.>"])
        for i in range(300):
            await js.publish(f"laggy.{i % 3}", b"x")
        name = f"lag-{secrets.token_hex(4)}"
        spec = ConsumerSpec("LAGGY", "laggy", ("laggy.>",), batch=100, name=name)
        consumer = CheckpointedConsumer(nc, spec, Keep())
        await consumer.bind()
        assert await consumer.step() == 100
        assert sample("ledger_projection_lag_events", projection=name) == 200
        assert sample("ledger_projection_applied_seq", projection=name) == 100
        while await consumer.step():
            pass
        assert sample("ledger_projection_lag_events", projection=name) == 0
        assert sample("ledger_projection_events_total", projection=name) == 300
        assert sample("ledger_projection_retries_total", projection=name) == 0
        await consumer.bind()  # what the consumer does after a failure
        assert sample("ledger_projection_retries_total", projection=name) == 1
        await consumer.close()
    finally:
        await nc.drain()


async def test_endpoint_serves_the_exposition_format_and_refuses_a_taken_port() -> None:
    server = await serve_metrics("127.0.0.1:0")
    try:
        async with aiohttp.ClientSession() as http, http.get(server.url) as response:
            assert response.status == 200 and response.content_type == "text/plain"
            text = await response.text()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"ledger_commands", "ledger_projection_lag_events", "ledger_nats_reconnects"} <= names
        with pytest.raises(ConfigError, match="taken"):
            await serve_metrics(f"127.0.0.1:{server.port}")
    finally:
        await server.close()


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hi")


async def test_an_existing_aiohttp_app_mounts_metrics_and_counts_its_requests() -> None:
    """What the HTTP gateway does: its own app, its own server label, /metrics beside its routes."""
    app = web.Application(middlewares=[http_metrics("gateway-test")])
    app.router.add_get("/hello/{name}", hello)
    add_metrics_route(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            for who in ("a", "b"):
                async with http.get(f"http://127.0.0.1:{port}/hello/{who}") as response:
                    assert response.status == 200
            async with http.get(f"http://127.0.0.1:{port}/nowhere") as response:
                assert response.status == 404
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
        requests = {
            (s.labels["route"], s.labels["status"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "ledger_http_requests_total" and s.labels["server"] == "gateway-test"
        }
        assert requests[("/hello/{name}", "200")] == 2  # the route's pattern, never the path
        assert requests[("unmatched", "404")] == 1
    finally:
        await runner.cleanup()
