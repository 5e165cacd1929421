"""Flows: HTTP against the API as `billing api` serves it (granian), a real Celery worker and a private broker,
on the test database."""
import pytest

from tests.conftest import stack_broker
from tests.processes import Stack
from tests.standins.x402_facilitator import FacilitatorStandIn


@pytest.fixture(scope="package")
def stack(database_url, tmp_path_factory, broker, request):
    """API and worker, started once for all the flows (once per broker: see tests/conftest.py)."""
    stack = Stack(database_url, tmp_path_factory.mktemp("stack"), broker=stack_broker(request, broker))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def facilitator():
    """The x402 facilitator stand-in (tests/standins/x402_facilitator.py) on a loopback port, one per module."""
    standin = FacilitatorStandIn().start()
    yield standin
    standin.stop()
