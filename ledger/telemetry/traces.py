"""OpenTelemetry spans from the client through the service to the append (optional).

``LEDGER_TRACES=off`` (default) installs nothing, and no span is made unless an application
set a global provider. ``console`` prints finished spans to
stderr; ``otlp`` sends them to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (needs
``opentelemetry-exporter-otlp-proto-http``). An application that configures OpenTelemetry
itself gets the client's spans, and their W3C ``traceparent`` travels in the NATS headers
of every command, so the service's span (``server_span``) joins the caller's trace.

Span names and attributes carry subjects' kinds, event types and sequences: never a token.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Tracer, TracerProvider

from ledger.domain.errors import ConfigError

NAME = "session-ledger"
_GLOBAL = trace.get_tracer(NAME)  # a proxy: no-op until an application sets a global provider
_provider: TracerProvider | None = None  # set by ``configure`` (or a test)
_tracer: Tracer = _GLOBAL


def provider() -> TracerProvider:
    return _provider if _provider is not None else trace.get_tracer_provider()


def tracer() -> Tracer:
    return _tracer


def use(chosen: TracerProvider | None) -> None:
    """Make ``chosen`` the provider of session-ledger's own spans (None: the global one)."""
    global _provider, _tracer
    _provider = chosen
    _tracer = chosen.get_tracer(NAME) if chosen is not None else _GLOBAL


def enabled() -> bool:
    return _provider is not None


GLOBAL_RECHECK_S = 1.0
_global_set = False
_global_checked_at = float("-inf")


def recording() -> bool:
    """Spans go somewhere: ``configure``/``use`` chose a provider, or the application set a
    global one. Otherwise the spans below cost nothing (the no-op API alone costs ~10-30 us).

    Whether an application set a global provider is asked at most once a second: asking
    (``trace.get_tracer_provider``) looks up an environment variable, a few microseconds on
    every span of every command (measured: ~5% of the service's CPU per session start). A
    global provider cannot be replaced or removed once set, so a yes is kept for good."""
    global _global_set, _global_checked_at
    if _provider is not None or _global_set:
        return True
    now = time.monotonic()
    if now - _global_checked_at >= GLOBAL_RECHECK_S:
        _global_checked_at = now
        _global_set = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _global_set


def configure(mode: str) -> SdkProvider | None:
    """Install an SDK provider for ``console`` or ``otlp``; nothing for ``off``."""
    if mode == "off":
        return None

    exporter: SpanExporter = ConsoleSpanExporter() if mode == "console" else _otlp()
    sdk = SdkProvider(resource=Resource.create({"service.name": NAME}))
    sdk.add_span_processor(BatchSpanProcessor(exporter))
    use(sdk)
    return sdk


def _otlp() -> Any:
    try:  # an optional package: imported by name so that type checking does not require it
        module = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        raise ConfigError(
            "LEDGER_TRACES=otlp needs: pip install opentelemetry-exporter-otlp-proto-http"
        ) from None
    return module.OTLPSpanExporter()


@contextlib.contextmanager
def client_span(subject: str) -> Iterator[dict[str, str] | None]:
    """A CLIENT span around a request; yields the headers that carry its context (or None)."""
    if not recording():
        yield None
        return
    kind = ".".join(subject.split(".")[-2:])  # cmd.rotate, q.sessions: never a caller's value
    with tracer().start_as_current_span(f"ledger {kind}", kind=SpanKind.CLIENT) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", subject)
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers or None


@contextlib.contextmanager
def server_span(subject: str, headers: dict[str, str] | None) -> Iterator[None]:
    """The service's span for a request, a child of the caller's span when its headers carry one."""
    if not recording():
        yield
        return
    parent = propagate.extract(headers or {})
    kind = ".".join(subject.split(".")[-2:])
    with tracer().start_as_current_span(
        f"ledger {kind} process", context=parent, kind=SpanKind.SERVER
    ) as span:
        span.set_attribute("messaging.system", "nats")
        span.set_attribute("messaging.destination.name", subject)
        yield


@contextlib.contextmanager
def append_span(event_type: str) -> Iterator[trace.Span]:
    if not recording():
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span("ledger append", kind=SpanKind.PRODUCER) as span:
        span.set_attribute("ledger.event_type", event_type)
        yield span
