"""OpenTelemetry traces, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set: one trace from the HTTP request
through the queue to the task and its SQL.

The context travels two ways. In the task message's headers: the Celery instrumentation injects `traceparent`
when a message is published and extracts it when the task starts. And in the operation row: the accepting
request's traceparent is stored as `operations.trace_parent`, from which the outbox relay resumes the original
trace when it sends a lost operation's message again, and from which a task whose message came without context
(from an untraced process) starts in that trace (tasks.ledger). A merged wake-up (worker.wakeups) resumes the
trace of the call whose arguments it sends and links the others.

Unset, nothing is installed (no exporter, no patched class, no signal receiver), this module imports nothing of
OpenTelemetry, and trace_parent() and resume() return at their first line. (redis-py 8 loads OpenTelemetry's
metrics SDK at import for its own observability, which stays off unless configured.)
"""
from collections.abc import Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

MAX_LINKS = 32  # traces linked from one resumed span; a merged wake-up may stand for hundreds of credits

_UNTRACED = nullcontext()
_provider = None  # this process's opentelemetry TracerProvider; None: tracing is off
_tracer = None  # its Tracer, for the spans made here
_w3c = None  # the W3C trace-context propagator


def setup(service_name: str, endpoint: str | None) -> bool:
    """With an endpoint (Settings.otlp_endpoint, which the exporter reads from the environment too): export spans
    over OTLP/HTTP and instrument Falcon, Celery and psycopg. Once per process, after any fork (the exporter's
    thread belongs to the process that made it). Whether tracing is on."""
    if _tracer is not None or not endpoint:
        return _tracer is not None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.falcon import FalconInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # Falcon: apps made from now on (get_app makes its app after this); psycopg: connections opened from now on.
    for instrumentor in (FalconInstrumentor(), CeleryInstrumentor(), PsycopgInstrumentor()):
        instrumentor.instrument(tracer_provider=provider)
    use(provider)
    return True


def use(provider) -> None:
    """Make this module's spans (resume) on `provider`, an opentelemetry TracerProvider; None: off (tests)."""
    global _provider, _tracer, _w3c
    _provider, _tracer = provider, None
    if provider is None:
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _w3c = TraceContextTextMapPropagator()
    _tracer = provider.get_tracer(__name__)


def flush() -> None:
    """Export what is buffered (a pool child may leave by os._exit, past the exporter's atexit)."""
    if _provider is not None:
        _provider.force_flush()


def on() -> bool:
    return _tracer is not None


def unrecorded() -> AbstractContextManager:
    """A block whose SQL and sends make no spans (a lookup made for tracing's own sake)."""
    if _tracer is None:
        return _UNTRACED
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def trace_parent() -> str | None:
    """The W3C traceparent of the current span (the request being served); None when off or outside a span."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _w3c.inject(carrier)
    return carrier.get("traceparent")


def resume(name: str, trace_parent: str | None, links: Sequence[str] = ()) -> AbstractContextManager:
    """A span `name` in the trace `trace_parent` names, so that a message sent in the block joins that trace;
    linked to the spans `links` name and to the current one (the relay's run). Nothing when off or no parent."""
    if _tracer is None or not trace_parent:
        return _UNTRACED
    return _resumed(name, trace_parent, links)


@contextmanager
def _resumed(name: str, trace_parent: str, links: Sequence[str]):
    from opentelemetry import trace

    spans = [trace.get_current_span(_w3c.extract({"traceparent": t})) for t in links[-MAX_LINKS:]]
    linked = [trace.Link(c) for c in (s.get_span_context() for s in [trace.get_current_span(), *spans])
              if c.is_valid]
    with _tracer.start_as_current_span(name, context=_w3c.extract({"traceparent": trace_parent}), links=linked):
        yield
