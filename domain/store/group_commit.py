"""Group commit: the rows of concurrent callers written by one statement and one commit.

The first caller to find no write under way writes every row waiting (its own among them) with `write`; those who
come meanwhile wait, and the first of them to wake once it is done writes the rows waiting then. A lone caller
writes at once, as it would alone; every caller returns only once its own row is committed, with its own result,
or raises what the write raised.
"""
import copy
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Row = TypeVar("Row")
Result = TypeVar("Result")


class _Waiting(Generic[Row, Result]):
    __slots__ = ("row", "done", "result", "error")

    def __init__(self, row: Row) -> None:
        self.row, self.done, self.result, self.error = row, False, None, None


def _copy(exc: BaseException) -> BaseException:
    """An exception of its own for each caller: one raised in many threads at once gets its traceback written by
    all of them."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


class GroupCommit(Generic[Row, Result]):
    """Calls of many threads merged: write(rows) commits the rows and returns one result per row, in order."""

    def __init__(self, write: Callable[[list[Row]], list[Result]]) -> None:
        self._write = write
        self._turn = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._writing = False

    def __call__(self, row: Row) -> Result:
        mine = _Waiting(row)
        with self._turn:
            self._waiting.append(mine)
            while self._writing and not mine.done:
                self._turn.wait()
            if not mine.done:
                self._writing, batch, self._waiting = True, self._waiting, []
        if not mine.done:
            self._write_batch(batch)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _write_batch(self, batch: list[_Waiting]) -> None:
        try:
            results = self._write([waiting.row for waiting in batch])
        except BaseException as exc:
            for waiting in batch:
                waiting.error = _copy(exc)
        else:
            for waiting, result in zip(batch, results, strict=True):
                waiting.result = result
        finally:
            with self._turn:
                for waiting in batch:
                    waiting.done = True
                self._writing = False
                self._turn.notify_all()
