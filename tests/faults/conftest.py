"""Faults: a private Redis per test, which the test starts the API and workers on, then breaks."""
import pytest

from tests.processes import Stack


@pytest.fixture
def stack(database_url, tmp_path):
    stack = Stack(database_url, tmp_path)
    try:
        yield stack
    finally:
        stack.stop()
