"""OpenTelemetry tracing, off unless configured (``STOCKSYNC_TRACING=otlp`` or ``console``).

An event's trace runs from the HTTP request (its ``traceparent`` header) or the NATS publish (a ``traceparent``
header on the message) through the batch's transaction to the relay's publish of what it changed: the
transaction's span context is stored with each outbox row it wrote, and the relay continues it. A batch of
NATS events is one transaction: its span continues the first event's trace and links the others'.

Off, nothing here starts a span or writes a header: the hot paths check `enabled` first. ``otlp`` exports to
``OTEL_EXPORTER_OTLP_ENDPOINT`` (OpenTelemetry's own variables: headers, protocol) over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind

TRACEPARENT = "traceparent"
_tracer = trace.get_tracer("stocksync")
_state = {"enabled": False}


def configure(mode: str, role: str) -> None:
    """Once per process, from the settings: ``off`` leaves tracing off."""
    if mode == "off":
        return
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: SpanExporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "stocksync", "stocksync.role": role}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use(provider)


def use(provider: TracerProvider) -> None:
    """Trace with ``provider`` (OpenTelemetry takes the first provider a process sets, for good)."""
    trace.set_tracer_provider(provider)
    _state["enabled"] = True


def enabled() -> bool:
    return _state["enabled"]


def disable() -> None:
    _state["enabled"] = False


def parent_of(headers: Mapping[str, str] | None) -> Context | None:
    """The trace a message or request carries, if any."""
    if not headers or TRACEPARENT not in headers:
        return None
    return propagate.extract(dict(headers))


def current_traceparent() -> str | None:
    """The current span's context as a ``traceparent`` value (None when tracing is off)."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(TRACEPARENT)


@contextmanager
def span(
    name: str,
    *,
    parent: Context | None = None,
    links: Sequence[Context] = (),
    kind: SpanKind = SpanKind.INTERNAL,
    **attributes: str | int,
) -> Iterator[Span | None]:
    """A span when tracing is on (continuing ``parent``, linking ``links``), nothing when it is off."""
    if not enabled():
        yield None
        return
    linked = [Link(trace.get_current_span(c).get_span_context()) for c in links]
    with _tracer.start_as_current_span(
        name, context=parent, links=linked, kind=kind, attributes=attributes
    ) as s:
        yield s
