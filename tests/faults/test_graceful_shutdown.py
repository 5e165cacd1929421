"""SIGTERM, as a deploy or `docker compose stop` sends it: the API drains, the worker shuts down warm.

The test holds a lock that the requests (or the worker's postings) wait on, so the signal arrives
while they are deterministically in flight.
"""
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from tests.processes import (WAIT_ON_LOCKS, account_locked, assert_sound, backends_waiting_on_locks, credit,
                             credits_until_both_pool_processes_block, entries_per_operation, statuses,
                             two_pool_processes_and_workspaces, wait_for_operations, wait_until)


def _refuses_connections(base_url: str) -> bool:
    try:
        requests.get(base_url + "/health", timeout=2)
    except requests.ConnectionError:
        return True
    return False


def test_sigterm_to_the_api_finishes_every_request_in_flight(stack, engine):
    """The six are sent one at a time, each once the one before is blocked: granian starts its app threads on
    demand, and a burst of requests can leave one queued behind threads that are all blocked on the lock until a
    thread frees (seen once in a fresh-clone run: five blocked, the sixth reached the app only 30 s later)."""
    stack.env.update(WAIT_ON_LOCKS)  # the six wait on the test's lock, not 500 ms: in flight until it is released
    stack.start(worker=False)
    [server] = [p for p in stack.processes if p.name == "api"]
    owner = stack.api.new_user()
    workspace = stack.api.new_workspace(owner)

    def grant(i):
        return stack.api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits",
                                  json={"amountCents": 100 + i})
    with ThreadPoolExecutor(6) as pool:
        with engine.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE operations IN EXCLUSIVE MODE"))  # reads pass, inserts wait
            answers = []
            for i in range(6):  # one at a time, each once the one before waits on the lock
                answers.append(pool.submit(grant, i))
                wait_until(lambda: len(backends_waiting_on_locks(engine)) == i + 1, 30, f"request {i + 1} to block")
            server.popen.send_signal(signal.SIGTERM)
            wait_until(lambda: _refuses_connections(stack.api.client.base_url), 10, "the API to stop accepting")
            assert server.popen.poll() is None  # still draining the six
        results = [answer.result() for answer in answers]

    assert [r.status_code for r in results] == [202] * 6, [r.text for r in results]
    assert server.popen.wait(timeout=25) == 0, server.output()[-3000:]
    assert set(statuses(engine, [r.json["id"] for r in results]).values()) == {"queued"}


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_sigterm_the_kernel_gives_to_any_thread_of_an_api_worker_stops_that_worker(stack):
    """The kernel hands a process's signal to any thread that does not block it, and kill() of a thread's id
    to that thread first. Python runs handlers in the main thread only, and granian parks its worker's main
    thread where only a signal of its own wakes it: without worker.http_server.stop_signals_reach_the_main_thread
    this worker serves on (seen: 1 SIGTERM in 4 from granian's own shutdown, to busy workers)."""
    stack.start(worker=False)
    [server] = [p for p in stack.processes if p.name == "api"]
    granian = server.popen.pid
    [worker] = [int(pid) for pid in Path(f"/proc/{granian}/task/{granian}/children").read_text().split()]
    threads = {int(task.name): (task / "comm").read_text().strip() for task in Path(f"/proc/{worker}/task").iterdir()}
    rust_thread = next(tid for tid, name in threads.items() if tid != worker and name.startswith("tokio"))

    os.kill(rust_thread, signal.SIGTERM)
    wait_until(lambda: not _running(worker), 10, "the worker given SIGTERM in a thread of granian's to stop")
    assert "Stopping worker-1" in server.output()
    wait_until(lambda: not _refuses_connections(stack.api.client.base_url), 30, "granian's new worker to serve")
    assert requests.get(stack.api.client.base_url + "/health", timeout=5).status_code == 200


@pytest.mark.rabbitmq
def test_sigterm_to_the_worker_finishes_its_current_credits_and_loses_none(stack, api, services, engine):
    owners, workspaces = two_pool_processes_and_workspaces(stack, api, 4)
    hot, cold = workspaces[0]["defaultBillingAccountId"], workspaces[3]["defaultBillingAccountId"]

    # `cold` stays locked until the worker is gone: its credits are certainly left for the next worker
    # (the stopping one's drains, once `hot` is free, apply whatever else is queued).
    with account_locked(engine, cold):
        with account_locked(engine, hot):
            ids = credits_until_both_pool_processes_block(stack, services, engine, workspaces[:3])
            ids += [credit(stack.services(services), workspaces[3], 50 + i) for i in range(3)]
            running = [i for i, status in statuses(engine, ids).items() if status == "running"]
            stack.worker.popen.send_signal(signal.SIGTERM)
            stack.worker.wait_for_output("worker: Warm shutdown", timeout=10)
            assert stack.worker.popen.poll() is None  # waiting for the two credits it is applying
        assert stack.worker.popen.wait(timeout=30) == 0, stack.worker.output()[-3000:]
    assert len(running) == 2 and statuses(engine, running) == {i: "succeeded" for i in running}
    assert "WorkerLostError" not in stack.worker.output()

    # The stopping worker put back what it had prefetched, so the next deploy's worker applies the rest
    # at once: no message waits out the visibility timeout, none needs the relay.
    unfinished = [i for i, status in statuses(engine, ids).items() if status != "succeeded"]
    assert stack.broker.unacknowledged() == 0 and stack.broker.ready("ledger") >= len(unfinished) >= 3
    stack.start(api=False)
    assert wait_for_operations(engine, ids, timeout=20) == {i: "succeeded" for i in ids}
    assert entries_per_operation(engine, ids) == {i: 1 for i in ids}
    with engine.connect() as conn:
        attempts = dict(conn.execute(text("SELECT id, attempts FROM operations WHERE id = ANY(:ids)"),
                                     {"ids": running}).all())
    assert attempts == {i: 1 for i in running}  # finished by the stopping worker, never run again
    assert_sound(services, hot, *ids)
