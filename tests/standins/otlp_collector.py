"""A loopback stand-in for an OpenTelemetry collector's OTLP/HTTP traces endpoint: it decodes each export
(protobuf, as the SDK's exporter sends it to $OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces) into spans a test walks.
"""
import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

SERVER, CLIENT, PRODUCER, CONSUMER = (ProtoSpan.SPAN_KIND_SERVER, ProtoSpan.SPAN_KIND_CLIENT,
                                      ProtoSpan.SPAN_KIND_PRODUCER, ProtoSpan.SPAN_KIND_CONSUMER)


@dataclass(frozen=True)
class Span:
    service: str  # the exporting process's service.name
    name: str
    kind: int  # SERVER, CLIENT, ... above
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_id: str  # "" for a root
    attributes: dict
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each span linked


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    found = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                found.append(Span(resource.get("service.name", ""), s.name, s.kind, s.trace_id.hex(),
                                  s.span_id.hex(), s.parent_span_id.hex(),
                                  {a.key: _value(a.value) for a in s.attributes},
                                  tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links)))
    return found


class OtlpCollector:
    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, found: Callable[[list[Span]], object], timeout: float = 30, what: str = "spans"):
        """found(spans)'s first truthy value, as exports arrive."""
        deadline = time.monotonic() + timeout
        while not (value := found(self.spans())):
            assert time.monotonic() < deadline, f"timed out waiting for {what}; got {self.spans()}"
            time.sleep(0.05)
        return value

    def __enter__(self) -> "OtlpCollector":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                with collector._lock:
                    collector._spans += _spans(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        return Handler
