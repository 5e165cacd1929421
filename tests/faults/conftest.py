"""Faults: each test on its own PostgreSQL and broker (a private Redis, or a virtual host of the session's
private RabbitMQ node), on free ports, which the test may break.

The fixtures that tests/conftest.py binds to the shared test database (`database_url`, `engine`, and
through them `services` and `api`) are bound here to the test's private server, so everything a fault
test checks is in its own database.
"""
import pytest

from domain.store.uow import make_engine
from tests.conftest import stack_broker
from tests.postgres_server import PostgresServer, build_template, remove_template
from tests.processes import Stack
from tests.standins.stripe_api import StripeStandIn


@pytest.fixture(scope="session")
def postgres_template(tmp_path_factory):
    template = build_template(tmp_path_factory.mktemp("postgres-template"))
    yield template
    remove_template(template)


@pytest.fixture
def postgres(postgres_template, tmp_path) -> PostgresServer:
    server = PostgresServer(postgres_template, tmp_path)
    yield server
    server.remove()


@pytest.fixture
def database_url(postgres) -> str:
    return postgres.url


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url, pool_size=20)
    yield engine
    engine.dispose()


@pytest.fixture
def stack(database_url, postgres, tmp_path, broker, request):
    stack = Stack(database_url, tmp_path, postgres, broker=stack_broker(request, broker))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stripe_api():
    """The Stripe stand-in, one per test here (tests/conftest.py's is one per module)."""
    with StripeStandIn() as standin:
        yield standin
