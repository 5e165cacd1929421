"""Tracing is off unless OTEL_EXPORTER_OTLP_ENDPOINT is set; a merged wake-up joins one trace and links the rest."""
import json
import os
import subprocess
import sys
import threading

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.processes import ROOT, wait_until
from worker import settings, tracing
from worker.wakeups import MergedSends

# What an API process (get_app) and a worker's pool child (worker_process_init) have installed, as JSON.
# (redis-py 8 imports OpenTelemetry's metrics API and SDK for its own observability, off unless configured.)
TRACING = ("opentelemetry.instrumentation", "opentelemetry.exporter", "opentelemetry.sdk.trace")
PROBE = f"""
import json, sys
import falcon, falcon.app, psycopg
from celery import signals
from api.app import get_app
import worker.celery_app
app = getattr(get_app(), "__wrapped__", None)  # the Falcon app inside api.connections' WSGI wrapper
signals.worker_process_init.send(sender=None)
print(json.dumps({{
    "modules": sorted(m for m in sys.modules if m.startswith({TRACING!r})),
    "falcon_patched": falcon.App is not falcon.app.App or type(app) is not falcon.app.App,
    "psycopg_wrapped": hasattr(psycopg.connect, "__wrapped__") or hasattr(psycopg.Connection.connect, "__wrapped__"),
    "publish_receivers": len(signals.before_task_publish.receivers),
    "run_receivers": len(signals.task_prerun.receivers),
}}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean |= {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "BILLING_OPERATOR_TOKEN": "t"} | env
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_without_the_endpoint_no_instrumentation_no_sdk_tracer_and_no_exporter_is_even_imported():
    off, on = _probe(), _probe(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    assert off["modules"] == [] and not off["falcon_patched"] and not off["psycopg_wrapped"]
    assert on["modules"] and on["falcon_patched"] and on["psycopg_wrapped"]
    assert (on["publish_receivers"], on["run_receivers"]) == (off["publish_receivers"] + 1, off["run_receivers"] + 1)


def test_off_the_helpers_answer_nothing_and_open_no_span():
    assert tracing.trace_parent() is None
    with tracing.resume("relay", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"):
        assert not trace.get_current_span().get_span_context().is_valid


def test_a_merged_wake_up_is_sent_in_the_trace_of_the_newest_call_and_links_the_others():
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer, release, sent = provider.get_tracer("test"), threading.Event(), []

    def send(task_name: str, **kwargs) -> bool:
        sent.append((kwargs["operation_id"], trace.get_current_span().get_span_context().trace_id))
        release.wait(5)  # the first send holds the thread while the next calls merge
        return True

    tracing.use(provider)
    try:
        wake, requests = MergedSends(send, interval=0.01), []
        for n in range(3):
            with tracer.start_as_current_span(f"request {n}") as span:
                requests.append(span.get_span_context())
                wake("ledger.apply_operation", operation_id=f"op_{n}")
            if n == 0:
                wait_until(lambda: sent, 5, "the first send")
        release.set()
        wait_until(lambda: len(sent) == 2, 5, "the merged send")
    finally:
        tracing.use(None)
    assert sent == [("op_0", requests[0].trace_id), ("op_2", requests[2].trace_id)]
    merged = [s for s in exporter.get_finished_spans() if s.name == "wake-up ledger.apply_operation"][-1]
    assert merged.parent.span_id == requests[2].span_id
    assert [link.context.span_id for link in merged.links] == [requests[1].span_id]


def test_an_endpoint_that_is_no_http_url_stops_the_process_with_one_line():
    assert settings.load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}).otlp_endpoint == "http://otel:4318"
    with pytest.raises(settings.SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        settings.load({"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4318"})
