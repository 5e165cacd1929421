"""Traces across the queue: the served API and a real worker, OTEL_EXPORTER_OTLP_ENDPOINT pointing at a collector
stand-in, export over OTLP/HTTP; one trace runs from the HTTP request through the message to the task and the SQL
it makes, and through the outbox relay (from the traceparent stored on the operation) when the message was lost."""
import json

import pytest
import redis
from sqlalchemy import text

from domain.names import Task
from tests.processes import Stack, age_operations, wait_for_operations, wait_until
from tests.standins.otlp_collector import CLIENT, CONSUMER, PRODUCER, SERVER, OtlpCollector, Span

RUN, PUBLISH = f"run/{Task.APPLY_OPERATION}", f"apply_async/{Task.APPLY_OPERATION}"


@pytest.fixture(scope="module")
def collector():
    with OtlpCollector() as collector:
        yield collector


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory, collector):
    """API and worker exporting to the collector, each span within 50 ms of its end."""
    stack = Stack(database_url, tmp_path_factory.mktemp("traced"))
    stack.env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    try:
        stack.start(concurrency=1)
        yield stack
    finally:
        stack.stop()


def _credit(stack, amount_cents: int) -> str:
    owner = stack.api.new_user()
    workspace = stack.api.new_workspace(owner)
    posted = stack.api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits",
                                json={"amountCents": amount_cents, "description": "traced"})
    assert posted.status_code == 202, posted.text
    return posted.json["id"]


def _stored_parent(engine, operation_id: str) -> tuple[str, str]:
    """(trace id, span id) of the traceparent stored on the operation."""
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT trace_parent FROM operations WHERE id = :id"),
                              {"id": operation_id}).scalar_one()
    version, trace_id, span_id, _flags = stored.split("-")
    return trace_id, span_id


def _ancestors(span: Span, spans: list[Span]) -> list[Span]:
    by_id, chain = {s.span_id: s for s in spans}, []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def _task_trace(collector, trace_id: str) -> tuple[list[Span], Span, list[Span]]:
    """The trace's spans once the worker's task run and its ledger posting arrived: (spans, run, its SQL)."""
    def found(exported: list[Span]):
        spans = [s for s in exported if s.trace_id == trace_id]
        for run in (s for s in spans if s.name == RUN and s.service == "billing-worker"):
            sql = [s for s in spans if s.kind == CLIENT and run in _ancestors(s, spans)]
            if any("INSERT INTO ledger_entries" in str(s.attributes.get("db.statement")) for s in sql):
                return spans, run, sql
        return None
    return collector.wait_for(found, what=f"the task's spans in trace {trace_id}")


def test_one_trace_from_the_credit_request_through_the_message_to_the_task_and_its_sql(stack, collector, engine):
    operation_id = _credit(stack, 700)
    assert wait_for_operations(engine, [operation_id]) == {operation_id: "succeeded"}
    trace_id, server_id = _stored_parent(engine, operation_id)

    spans, run, sql = _task_trace(collector, trace_id)
    server = next(s for s in spans if s.span_id == server_id)
    assert (server.service, server.kind, server.name) == (
        "billing-api", SERVER, "POST /workspaces/{workspace_id}/billing/credits")
    chain = _ancestors(run, spans)
    publish = chain[0]
    assert (publish.service, publish.kind, publish.name) == ("billing-api", PRODUCER, PUBLISH)
    assert (run.kind, chain[-1]) == (CONSUMER, server)
    assert [s.name for s in chain[1:-1]] == [f"wake-up {Task.APPLY_OPERATION}"]
    for statement in sql:
        assert statement.service == "billing-worker" and server in _ancestors(statement, spans)
        assert statement.attributes["db.system"] == "postgresql"
    assert len({s.trace_id for s in spans}) == 1


def _lost_credit(stack, engine) -> str:
    """A credit accepted over HTTP whose message the broker lost, due for the relay; the worker up again."""
    stack.worker.stop()  # nobody consumes: the message waits in Redis, where the test loses it
    broker = redis.Redis.from_url(stack.broker.url)
    # What the stopped worker put back goes too: its task would drain this credit with its batch, in its trace.
    broker.delete("ledger", "maintenance")
    operation_id = _credit(stack, 300)
    # The credit's wake-up (sent within BILLING_WAKE_INTERVAL_MS) is in the ledger queue before it is emptied,
    # so no message that would apply the credit survives to race the relay's. (Counting messages raced: on a
    # loaded machine the user's and workspace's messages could make the count before the wake-up came.)
    wait_until(lambda: any(json.loads(m).get("headers", {}).get("task") == Task.APPLY_OPERATION
                           for m in broker.lrange("ledger", 0, -1)), 30, "the credit's wake-up in the broker",
               every=0.02)
    broker.delete("ledger")
    age_operations(engine, [operation_id])
    stack.start(api=False)
    return operation_id


def test_a_relayed_operation_joins_the_trace_of_the_request_that_accepted_it(stack, collector, engine):
    operation_id = _lost_credit(stack, engine)
    stack.send_task(Task.RELAY_OUTBOX)  # the worker's relay, traced: it resumes the stored trace
    assert wait_for_operations(engine, [operation_id]) == {operation_id: "succeeded"}
    trace_id, server_id = _stored_parent(engine, operation_id)

    spans, run, _ = _task_trace(collector, trace_id)
    chain = _ancestors(run, spans)
    assert [(s.service, s.name) for s in chain[:2]] == [("billing-worker", PUBLISH),
                                                        ("billing-worker", f"relay {Task.APPLY_OPERATION}")]
    relayed = chain[1]
    assert relayed.parent_id == server_id and chain[-1].span_id == server_id
    relay_runs = {s.span_id: s for s in collector.spans() if s.name == f"run/{Task.RELAY_OUTBOX}"}
    assert [relay_runs.get(span_id) is not None for _, span_id in relayed.links] == [True]
    assert relay_runs[relayed.links[0][1]].trace_id != trace_id  # the relay's own run: linked, not the parent
