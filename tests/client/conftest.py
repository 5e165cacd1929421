"""The Python client against the served API (granian), a real Celery worker, a private Redis, and the
x402 facilitator stand-in, started once for the package."""
import uuid

import pytest
from billing_client import BillingClient
from billing_client.models import CreatedUser

from tests.factories import OPERATOR_TOKEN
from tests.processes import X402_NETWORK, x402_stack
from tests.standins.x402_facilitator import FacilitatorStandIn

NETWORK = X402_NETWORK


@pytest.fixture(scope="package")
def facilitator():
    standin = FacilitatorStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture(scope="package")
def stack(database_url, tmp_path_factory, facilitator):
    with x402_stack(database_url, tmp_path_factory.mktemp("client-stack"), facilitator) as stack:
        yield stack


@pytest.fixture
def base_url(stack) -> str:
    return stack.api.client.base_url


@pytest.fixture
def connect(base_url):
    """BillingClient(base_url, key, **options), closed after the test."""
    opened = []

    def connect(key: str, **options) -> BillingClient:
        opened.append(BillingClient(base_url, key, **options))
        return opened[-1]
    yield connect
    for client in opened:
        client.close()


@pytest.fixture
def operator(connect) -> BillingClient:
    return connect(OPERATOR_TOKEN)


@pytest.fixture
def new_user(operator, connect):
    """A new user, created by the operator: (the created user, a client with its key)."""
    def new_user(name: str = "Ada") -> tuple[CreatedUser, BillingClient]:
        created = operator.create_user(f"{name.lower()}-{uuid.uuid4().hex[:10]}@example.com", name)
        return created, connect(created.api_key)
    return new_user
