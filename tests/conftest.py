"""Test fixtures: a fresh PostgreSQL database per run (migrated), the real app, real services."""
import os
import uuid

import pytest
from falcon import testing
from sqlalchemy import create_engine, text

from api.app import create_app
from domain import tracing
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork, make_engine
from tests.factories import OPERATOR_TOKEN, Api
from tests.rabbitmq_server import RabbitServer
from tests.standins.stripe_api import StripeStandIn
from worker.processes import migrate

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _admin_engine():
    return create_engine(ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                         isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def database_url() -> str:
    """A new database for this run, migrated to head, dropped at the end."""
    name = f"billing_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def pytest_configure(config):
    config.addinivalue_line("markers", "rabbitmq(only=False): run the test's stack on RabbitMQ as well as on "
                                       "Redis (only=True: on RabbitMQ alone)")


def pytest_generate_tests(metafunc):
    """A test whose stack asks for `broker` runs on Redis ([redis]) and, marked `rabbitmq`, on RabbitMQ too
    ([rabbitmq]). Every such test is parametrized: a package-wide stack is then torn down and built again
    when the broker changes, never reused across brokers."""
    if "broker" in metafunc.fixturenames and not _parametrizes_itself(metafunc, "broker"):
        marker = metafunc.definition.get_closest_marker("rabbitmq")
        brokers = ["redis"] if marker is None else ["rabbitmq"] if marker.kwargs.get("only") else ["redis", "rabbitmq"]
        metafunc.parametrize("broker", brokers, scope="package")


def _parametrizes_itself(metafunc, name: str) -> bool:
    """The test lists its brokers itself (@pytest.mark.parametrize("broker, ...", ...))."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if name in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return True
    return False


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory):
    """One private RabbitMQ node for the session, started when a test first asks for RabbitMQ."""
    server = RabbitServer(tmp_path_factory.mktemp("rabbitmq"))
    yield server
    server.remove()


def stack_broker(request, broker: str):
    """The broker a Stack is given: None for its own private Redis, or a virtual host of the RabbitMQ node."""
    return request.getfixturevalue("rabbitmq_server").vhost() if broker == "rabbitmq" else None


class RecordingQueue:
    """Stands in for the broker where a test does not run a worker: records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.request_ids: list[str | None] = []
        self.up = True

    def __call__(self, task_name: str, **kwargs) -> bool:
        if self.up:
            self.sent.append((task_name, kwargs))
            self.request_ids.append(tracing.request_id.get())
        return self.up


@pytest.fixture(scope="session")
def engine(database_url):
    engine = make_engine(database_url, pool_size=20)
    yield engine
    engine.dispose()


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue()


@pytest.fixture
def services(engine, queue) -> Services:
    return Services(Context(uow=lambda: UnitOfWork(engine), enqueue=queue, config=Config(intro_credit_cents=1000)))


@pytest.fixture
def api(services) -> Api:
    checks = {"database": lambda: None}
    return Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, checks)))


@pytest.fixture(scope="module")
def stripe_api():
    """The Stripe stand-in (tests/standins/stripe_api.py) on a loopback port, one per module; tests/faults
    has one per test."""
    with StripeStandIn() as standin:
        yield standin


@pytest.fixture(autouse=True)
def _process_logs(request):
    """Print a flow or fault stack's process output after each test: pytest shows it when one fails."""
    stack = request.getfixturevalue("stack") if "stack" in request.fixturenames else None
    yield
    if stack is not None:
        print(stack.logs())


@pytest.fixture
def receiver():
    """A webhook receiver in this process (tests/standins/webhook_receiver.py) on a loopback port."""
    from tests.standins.webhook_receiver import WebhookReceiver
    with WebhookReceiver() as receiver:
        yield receiver
