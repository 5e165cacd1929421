"""worker.logs: the JSON line, and what `billing standalone` leaves out of it (beat's jobs that did nothing)."""
import io
import json
import logging

import pytest

from worker import logs


@pytest.fixture
def configure(monkeypatch):
    """logs.configure with BILLING_LOG_ROUTINE_JOBS as given; the lines it wrote, parsed."""
    root = logging.getLogger()
    saved = root.handlers, root.level

    def configured(routine_jobs: str | None):
        if routine_jobs is None:
            monkeypatch.delenv("BILLING_LOG_ROUTINE_JOBS", raising=False)
        else:
            monkeypatch.setenv("BILLING_LOG_ROUTINE_JOBS", routine_jobs)
        stream = io.StringIO()
        monkeypatch.setattr(logs.sys, "stderr", stream)
        root.handlers = []
        logs.configure("worker")
        return lambda: [json.loads(line) for line in stream.getvalue().splitlines()]

    yield configured
    root.handlers, root.level = saved


def task_line(level: int, name: str, message: str, **data) -> None:
    """As celery.app.trace logs it: the task's fields in `data`."""
    logging.getLogger("celery.app.trace").log(level, message, extra={"data": {"name": name, **data}})


def test_beats_jobs_that_did_nothing_are_left_out_and_the_rest_is_logged(configure):
    lines = configure("0")  # as `billing standalone` sets it
    logging.getLogger("celery.beat").info("Scheduler: Sending due task relay-outbox (maintenance.relay_outbox)")
    logging.getLogger("celery.beat").info("beat: Starting...")
    task_line(logging.INFO, "maintenance.relay_outbox", "received")
    task_line(logging.INFO, "maintenance.relay_outbox", "nothing relayed", return_value="0")
    task_line(logging.INFO, "payments.relay_auto_top_ups", "nothing", return_value="{'sent': 0, 'cards': 0}")
    task_line(logging.INFO, "maintenance.relay_outbox", "relayed", return_value="3")
    task_line(logging.INFO, "payments.relay_auto_top_ups", "one sent", return_value="{'sent': 1, 'cards': 0}")
    task_line(logging.ERROR, "maintenance.relay_outbox", "raised")
    task_line(logging.INFO, "ledger.apply_operation", "received")
    assert [line["message"] for line in lines()] == ["beat: Starting...", "relayed", "one sent", "raised",
                                                     "received"]


@pytest.mark.parametrize("routine_jobs", [None, "1"])
def test_without_the_setting_every_line_is_logged(configure, routine_jobs):
    lines = configure(routine_jobs)
    logging.getLogger("celery.beat").info("Scheduler: Sending due task relay-outbox (maintenance.relay_outbox)")
    task_line(logging.INFO, "maintenance.relay_outbox", "nothing relayed", return_value="0")
    assert len(lines()) == 2
