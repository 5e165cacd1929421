"""A worker host cut off in the middle of a credit's transaction, and what the cluster does about it."""
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import text

from tests.hosts.cluster import Cluster
from tests.hosts.network import Host
from tests.processes import statuses, wait_until

# Workers wait on a locked account (as on any long transaction) instead of giving the attempt back after
# BILLING_DB_LOCK_TIMEOUT_MS: the test holds the account so that the cut falls inside the transaction.
WAIT_ON_LOCKS = {"BILLING_DB_LOCK_TIMEOUT_MS": "120000"}
HELD_CREDIT_CENTS = 777  # the credit in flight at the cut


@dataclass(frozen=True)
class Cut:
    host: Host
    operation_id: str  # the credit whose transaction the host had open
    at: float  # time.monotonic() of the cut


@contextmanager
def _holding(engine, account_id: str) -> Iterator[int]:
    """Hold the account's row lock; the holding backend's pid."""
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1 FROM billing_accounts WHERE id = :id FOR UPDATE"), {"id": account_id})
        yield conn.execute(text("SELECT pg_backend_pid()")).scalar()


def _waiting_on(engine, holder: int) -> str | None:
    """The address of the client whose statement waits on the holder's lock."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT host(client_addr) FROM pg_stat_activity "
                                 "WHERE :holder = ANY(pg_blocking_pids(pid))"), {"holder": holder}).scalar()


def cut_mid_credit(cluster: Cluster, engine, workspace: dict) -> Cut:
    """Credit the workspace while its account is held, cut off the worker host whose transaction then waits on
    the account (its operation marked running, its posting statement inside an open transaction), and let
    go of the account: the statement completes on the server, whose answer, and any commit, never cross."""
    with _holding(engine, workspace["defaultBillingAccountId"]) as holder:
        answer = cluster.api.operator("POST", f"/workspaces/{workspace['id']}/billing/credits",
                                      json={"amountCents": HELD_CREDIT_CENTS, "description": "in flight at the cut"})
        assert answer.status_code == 202, answer.text
        address = wait_until(lambda: _waiting_on(engine, holder), 30, "a worker to wait on the account")
        [host] = [h for h in cluster.network.hosts.values() if h.address == address]
        host.cut()
        at = time.monotonic()
    return Cut(host, answer.json["id"], at)


def seconds_until_applied(engine, cut: Cut, timeout: float = 180) -> float:
    """Seconds from the cut until the operation the cut-off host had in flight succeeded (applied elsewhere)."""
    wait_until(lambda: statuses(engine, [cut.operation_id]) == {cut.operation_id: "succeeded"}, timeout,
               f"another host to apply {cut.operation_id}", every=0.05)
    return time.monotonic() - cut.at
