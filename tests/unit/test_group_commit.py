import threading
import time

import pytest

from domain.errors import Unavailable
from domain.store.group_commit import GroupCommit


def test_a_lone_caller_writes_its_row_at_once():
    batches = []
    group = GroupCommit(lambda rows: batches.append(rows) or [row * 2 for row in rows])
    assert group(21) == 42
    assert batches == [[21]]


def test_callers_who_come_while_a_write_is_under_way_are_written_together_each_with_its_own_result():
    batches, first_started, release = [], threading.Event(), threading.Event()

    def write(rows):
        batches.append(list(rows))
        if len(batches) == 1:
            first_started.set()
            release.wait(5)
        return [f"r{row}" for row in rows]
    group = GroupCommit(write)
    results = {}

    def call(n):
        results[n] = group(n)
    first = threading.Thread(target=call, args=(0,))
    first.start()
    first_started.wait(5)
    others = [threading.Thread(target=call, args=(n,)) for n in range(1, 6)]
    for thread in others:
        thread.start()
    time.sleep(0.2)  # all five wait behind the first write
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert results == {n: f"r{n}" for n in range(6)}
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5] and len(batches) == 2


def test_every_caller_of_a_failed_write_raises_and_the_next_write_goes_ahead():
    calls = []

    def write(rows):
        calls.append(rows)
        if len(calls) == 1:
            raise Unavailable("the database is unavailable")
        return rows
    group = GroupCommit(write)
    with pytest.raises(Unavailable):
        group("a")
    assert group("b") == "b"


def test_many_threads_each_get_their_own_result_however_the_rows_are_grouped():
    group = GroupCommit(lambda rows: [row + 1 for row in rows])
    results, lock = [], threading.Lock()

    def caller(start):
        for n in range(start, start + 200):
            value = group(n)
            with lock:
                results.append((n, value))
    threads = [threading.Thread(target=caller, args=(k * 1000,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == sorted((n, n + 1) for k in range(8) for n in range(k * 1000, k * 1000 + 200))
