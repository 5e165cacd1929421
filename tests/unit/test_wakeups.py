"""Merged wake-ups: many calls, few sends, and never a call without a send after it."""
import threading
import time

from domain import tracing
from worker.wakeups import MergedSends


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
