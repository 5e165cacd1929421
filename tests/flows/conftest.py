"""Flows: HTTP against gunicorn, a real Celery worker and a private Redis, on the test database."""
import pytest

from tests.processes import Stack


@pytest.fixture(scope="package")
def stack(database_url, tmp_path_factory):
    """API and worker, started once for all the flows."""
    stack = Stack(database_url, tmp_path_factory.mktemp("stack"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
