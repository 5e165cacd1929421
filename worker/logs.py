"""JSON log lines on stderr, each carrying the request id and operation id in effect."""
import logging
import os
import re
import sys
import time

from pythonjsonlogger.orjson import OrjsonFormatter

import beat_schedule
from domain import tracing


class _Correlation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", None) or tracing.request_id.get()
        record.operation_id = getattr(record, "operation_id", None) or tracing.operation_id.get()
        return True


class QuietRoutine(logging.Filter):
    """Leaves out the INFO lines of beat's periodic jobs that found nothing to do: beat's "Sending due task",
    the worker's "received" and "succeeded" of a scheduled task whose result holds no number but 0. A job
    that did work (relayed 3 operations, expired a grant), and every warning and error, is still logged."""

    def __init__(self, task_names: frozenset[str]) -> None:
        super().__init__()
        self._routine = task_names

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        if record.name == "celery.beat":
            return not record.getMessage().startswith("Scheduler: Sending due task")
        data = getattr(record, "data", None)
        if not isinstance(data, dict) or data.get("name") not in self._routine:
            return True
        return "return_value" in data and _did_work(data["return_value"])


def _did_work(result: object) -> bool:
    return re.search(r"[1-9]", str(result)) is not None


class _Formatter(OrjsonFormatter):
    """The JSON line, its time's date and seconds formatted once per second (the API writes a line per request)."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return self.default_msec_format % (text, record.msecs)


def json_handler(stream, service: str) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.addFilter(_Correlation())
    handler.setFormatter(_Formatter(  # orjson: half the cost of a line (one per request)
        "{asctime}{levelname}{name}{message}{request_id}{operation_id}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        static_fields={"service": service}))
    return handler


def configure(service: str) -> None:
    """Route every logger to one JSON handler on stderr; idempotent."""
    root = logging.getLogger()
    if any(getattr(h, "billing_json", False) for h in root.handlers):
        return
    handler = json_handler(sys.stderr, service)
    handler.billing_json = True
    if os.environ.get("BILLING_LOG_ROUTINE_JOBS", "1") == "0":  # `billing standalone` sets it: a terminal to read
        handler.addFilter(QuietRoutine(frozenset(job["task"] for job in beat_schedule.SCHEDULE.values())))
    root.handlers = [handler]
    # What a record would gather that no line shows (its caller's file and line, thread, process): skipped, as
    # the logging HOWTO's "Optimization" advises; the API writes one record per request.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
