"""Merged wake-ups: many calls, few sends, and never a call without a send after it."""
import threading
import time
import uuid

import redis

from domain import tracing
from worker.wakeups import MergedSends, WaitingFlag


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.sends: list[tuple[float, str, dict, str | None]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, task_name: str, **kwargs) -> bool:
        time.sleep(self.delay)
        with self.lock:
            self.sends.append((time.monotonic(), task_name, kwargs, tracing.request_id.get()))
        return True


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_calls_within_an_interval_share_one_send_that_carries_the_newest_arguments():
    recorder = Recorder(delay=0.05)
    wake = MergedSends(recorder, interval=0.2)
    calls = []
    for n in range(50):
        token = tracing.request_id.set(f"req-{n}")
        calls.append(time.monotonic())
        wake("ledger.apply_operation", operation_id=f"op_{n}")
        tracing.request_id.reset(token)
    wait_for(lambda: recorder.sends and recorder.sends[-1][2] == {"operation_id": "op_49"})
    assert 1 <= len(recorder.sends) <= 2  # the first call's send, and one for all that came while it ran
    last_sent_at, task, _, request_id = recorder.sends[-1]
    assert (task, request_id) == ("ledger.apply_operation", "req-49")
    assert last_sent_at >= calls[-1]


def test_every_call_is_followed_by_a_send_that_starts_after_it():
    recorder = Recorder()
    wake = MergedSends(recorder, interval=0.01)
    called_at = []
    for n in range(20):
        called_at.append(time.monotonic())
        wake("ledger.apply_operation", operation_id=f"op_{n}")
        time.sleep(0.003)
    wait_for(lambda: recorder.sends and recorder.sends[-1][0] >= called_at[-1])
    sent_at = [s[0] for s in recorder.sends]
    assert all(any(t >= c for t in sent_at) for c in called_at)
    assert len(recorder.sends) < len(called_at)


def test_flush_sends_what_is_pending_at_once():
    recorder = Recorder()
    wake = MergedSends(recorder, interval=60)
    wake("ledger.apply_operation", operation_id="op_1")
    wait_for(lambda: len(recorder.sends) == 1)  # the first goes at once; the next waits out the interval
    wake("ledger.apply_operation", operation_id="op_2")
    wake.flush()
    assert [s[2] for s in recorder.sends] == [{"operation_id": "op_1"}, {"operation_id": "op_2"}]


def _flagged(recorder, task_name: str, interval: float = 0.01) -> tuple[MergedSends, WaitingFlag]:
    flag = WaitingFlag(redis.Redis.from_url("redis://127.0.0.1:6379/0"), ttl_ms=2000)  # the real Redis
    return MergedSends(recorder, interval=interval, waiting=flag, flagged=frozenset({task_name})), flag


def test_no_wake_up_is_sent_while_one_waits_in_the_queue_and_the_next_goes_once_its_task_started():
    task = f"test.apply-{uuid.uuid4().hex}"  # a key of its own on the shared Redis
    recorder = Recorder()
    wake, flag = _flagged(recorder, task)
    wake(task, operation_id="op_1")
    wait_for(lambda: len(recorder.sends) == 1)
    for n in range(2, 6):  # the first message has not been taken: nothing more is sent
        wake(task, operation_id=f"op_{n}")
        wake.flush()
    assert len(recorder.sends) == 1
    flag.lower(task)  # its task started: the next call sends again
    wake(task, operation_id="op_6")
    wait_for(lambda: len(recorder.sends) == 2)
    assert recorder.sends[-1][2] == {"operation_id": "op_6"}


def test_a_refused_send_lowers_the_flag_and_a_lost_message_lets_wake_ups_through_after_the_ttl():
    task = f"test.apply-{uuid.uuid4().hex}"
    refused = []
    wake, flag = _flagged(lambda name, **kw: refused.append(kw) and False, task)
    wake(task, operation_id="op_1")
    wait_for(lambda: len(refused) == 1)
    assert flag.raise_(task)  # the broker refused it: the flag is down, so the next wake-up is sent
    recorder = Recorder()
    wake, _ = _flagged(recorder, task)  # the flag just raised stands for a message lost on the way
    wake(task, operation_id="op_2")
    wake.flush()
    assert recorder.sends == []
    time.sleep(2.1)
    wake(task, operation_id="op_3")
    wait_for(lambda: len(recorder.sends) == 1, timeout=2)


def test_tasks_not_flagged_and_redis_down_always_send():
    recorder = Recorder()
    down = WaitingFlag(redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.1))
    wake = MergedSends(recorder, interval=0.01, waiting=down, flagged=frozenset({"ledger.apply_operation"}))
    wake("ledger.apply_operation", operation_id="op_1")
    wait_for(lambda: len(recorder.sends) == 1)
    wake("webhooks.dispatch")
    wait_for(lambda: len(recorder.sends) == 2)
