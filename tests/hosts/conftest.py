"""Hosts: the service spread over network namespaces of this machine (tests/hosts/network.py), one
PostgreSQL template per session copied for each cluster. Needs root (ip netns, veth, a bridge)."""
import pytest

from tests.faults.conftest import postgres_template  # noqa: F401  (a fixture: initdb and migrations, once)
from tests.hosts.cluster import Cluster
from tests.hosts.failover import WAIT_ON_LOCKS


@pytest.fixture
def cluster(postgres_template, tmp_path):  # noqa: F811
    """A cluster, not started; whatever it started is stopped and its namespaces deleted, pass or fail."""
    cluster = Cluster(postgres_template, tmp_path, env=WAIT_ON_LOCKS)
    try:
        yield cluster
    finally:
        if cluster.processes:
            print(cluster.logs())  # shown by pytest when the test failed
        cluster.stop()
