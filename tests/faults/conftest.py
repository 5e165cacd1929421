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


@pytest.fixture(autouse=True)
def _process_logs(request):
    """Print the processes' output after each test: pytest shows it when the test fails."""
    stack = request.getfixturevalue("stack") if "stack" in request.fixturenames else None
    yield
    if stack is not None:
        print(stack.logs())
