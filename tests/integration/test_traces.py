"""OpenTelemetry: one rotation is one trace, client -> service -> append."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from ledger.client import LedgerClient
from ledger.config import Settings
from ledger.retry import poll_until
from ledger.telemetry import traces


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traces.use(provider)  # as LEDGER_TRACES does, with an exporter the test can read
    try:
        yield exporter
    finally:
        traces.use(None)
        provider.shutdown()


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    chain = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        chain.append(span)
    return chain


async def test_a_rotation_is_one_trace_from_the_client_to_the_append(
    spans: InMemorySpanExporter, services: Any, settings: Settings
) -> None:
    await services.start(settings)
    async with await LedgerClient.connect(settings.nats_url) as client:
        pair = await client.start_session("trace-me")
        rotated = await client.rotate(pair.refresh_token)

    def rotation_appended() -> bool:
        return any(
            s.attributes.get("ledger.event_type") == "TokenRotated" for s in spans.get_finished_spans()
        )

    await poll_until(rotation_appended, deadline=30)
    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    [append] = [s for s in finished if s.attributes.get("ledger.event_type") == "TokenRotated"]
    [request] = [s for s in finished if s.name == "ledger cmd.rotate"]
    assert request.kind is SpanKind.CLIENT and append.kind is SpanKind.PRODUCER
    chain = ancestors(append, by_id)
    assert chain[-1] is request, [s.name for s in chain]  # the append's root is the client's request
    [served] = [s for s in chain if s.kind is SpanKind.SERVER]  # the service's span, in between
    assert served.name == "ledger cmd.rotate process"
    assert append.context.trace_id == request.context.trace_id
    assert append.attributes["ledger.seq"] > 0
    text = repr([(s.name, dict(s.attributes or {})) for s in finished])
    for secret in (pair.refresh_token, pair.access_token, rotated.refresh_token, rotated.access_token):
        assert secret not in text  # spans carry kinds, types and sequences, never a token


def test_off_installs_nothing_and_console_installs_a_provider() -> None:
    assert traces.configure("off") is None and not traces.enabled()
    with traces.client_span("ledger.cmd.rotate") as headers:
        assert headers is None  # nothing records: no span, no header, next to no cost
    provider = traces.configure("console")
    try:
        assert provider is not None and traces.enabled() and traces.provider() is provider
    finally:
        traces.use(None)
        assert provider is not None
        provider.shutdown()
