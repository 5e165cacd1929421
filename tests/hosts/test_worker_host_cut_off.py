"""A worker host cut off mid-task and brought back: the other host takes over, nothing is lost, nothing is
applied twice.

The API with beat, two worker hosts and the database/broker host each run in a network namespace of their
own (tests/hosts/network.py); this process drives credits and usage through the API over the bridge. One
worker host is cut off (its link taken down from inside: no FIN, no RST reaches PostgreSQL or Redis) while its
transaction posting a credit is open. PostgreSQL ends the silent session (idle_in_transaction_session_timeout),
the outbox relay re-sends the credit, and the other host applies it with everything accepted meanwhile. Then
the link comes back: the returned host consumes again, and its own late attempt finds the credit applied.

Prints how long the takeover took; asserts correctness only.
"""
import time
import uuid

from sqlalchemy import text

from domain.store.uow import make_engine
from tests.hosts.failover import HELD_CREDIT_CENTS, cut_mid_credit, seconds_until_applied
from tests.processes import Load, entries_per_operation, wait_for_operations, wait_until

INTRO_CENTS, CREDIT_CENTS, USAGE_CENTS = 1000, 100, 3


class Traffic:
    """Credits and one-event usage batches to the workspaces in turn (every third request a usage batch)."""

    def __init__(self, api, workspaces: list[dict]) -> None:
        self._api, self.workspaces, self._run = api, workspaces, uuid.uuid4().hex[:8]

    def send(self, n: int):
        workspace = self.workspaces[n % len(self.workspaces)]["id"]
        if self.is_usage(n):
            event = {"eventId": self.event_id(n), "metric": "tokens", "quantity": 1, "amountCents": USAGE_CENTS}
            return self._api.operator("POST", f"/workspaces/{workspace}/billing/usage", json={"events": [event]})
        return self._api.operator("POST", f"/workspaces/{workspace}/billing/credits",
                                  json={"amountCents": CREDIT_CENTS}, headers={"Idempotency-Key": self.event_id(n)})

    @staticmethod
    def is_usage(n: int) -> bool:
        return n % 3 == 2

    def event_id(self, n: int) -> str:
        return f"{self._run}-{n}"

    def expected_balance(self, answers, workspace_index: int) -> int:
        mine = [a.n for a in answers if a.n % len(self.workspaces) == workspace_index]
        return INTRO_CENTS + sum(-USAGE_CENTS if self.is_usage(n) else CREDIT_CENTS for n in mine)


def applied_something(process, since: int = 0) -> bool:
    return "succeeded in" in process.output()[since:]


def usage_entries(engine, event_ids: list[str]) -> dict[str, int]:
    with engine.connect() as conn:
        found = dict(conn.execute(text("SELECT reference, count(*) FROM ledger_entries WHERE kind = 'usage' "
                                       "AND reference = ANY(:ids) GROUP BY reference"), {"ids": event_ids}).all())
    return {i: found.get(i, 0) for i in event_ids}


def test_a_worker_host_cut_off_mid_credit_is_taken_over_and_applies_nothing_twice_once_back(cluster):
    cluster.start()
    api, engine = cluster.api, make_engine(cluster.database_url)  # this machine reaches every host
    owners = [api.new_user() for _ in range(4)]
    workspaces = [api.new_workspace(owner) for owner in owners]
    held, traffic = workspaces[0], Traffic(api, workspaces[1:])
    try:
        with Load(traffic.send, threads=1, pause=0.05) as load:
            wait_until(lambda: all(applied_something(cluster.processes[w]) for w in cluster.worker_names), 60,
                       "both worker hosts to apply operations")
            cut = cut_mid_credit(cluster, engine, held)
            returned = cluster.processes[cut.host.name]
            taken_over = seconds_until_applied(engine, cut)
            meanwhile = [a.result.json["id"] for a in load.answers() if a.result and a.result.status_code == 202]
            wait_for_operations(engine, meanwhile, timeout=120)
            caught_up = time.monotonic() - cut.at
            mark, link_back = len(returned.output()), time.monotonic()
            cut.host.restore()
            wait_until(lambda: applied_something(returned, since=mark), 60, "the returned host to apply again")
            consuming_again = time.monotonic() - link_back
        wait_until(lambda: cluster.idle(cut.host.name), 120, "the returned host to finish what it held")
        answers = load.answers()
        print(f"\nworker host {cut.host.name} cut off mid-credit: the other host applied its credit "
              f"{taken_over:.1f} s after the cut, and all {len(meanwhile)} operations accepted by then "
              f"{caught_up:.1f} s after it; {cut.host.name}, its link back, applied again after "
              f"{consuming_again:.1f} s")

        refused = [(a.n, a.error or a.result.text) for a in answers if a.result is None or a.result.status_code != 202]
        assert refused == []
        ids = [a.result.json["id"] for a in answers]
        assert set(wait_for_operations(engine, [cut.operation_id, *ids], timeout=120).values()) == {"succeeded"}
        credits = [cut.operation_id, *(a.result.json["id"] for a in answers if not traffic.is_usage(a.n))]
        assert {i: n for i, n in entries_per_operation(engine, credits).items() if n != 1} == {}
        events = [traffic.event_id(a.n) for a in answers if traffic.is_usage(a.n)]
        assert {i: n for i, n in usage_entries(engine, events).items() if n != 1} == {}
        balances = [api.call("GET", f"/workspaces/{w['id']}/billing/balance", o.key).json["balanceCents"]
                    for w, o in zip(workspaces, owners)]
        assert balances == [INTRO_CENTS + HELD_CREDIT_CENTS,
                            *(traffic.expected_balance(answers, i) for i in range(len(traffic.workspaces)))]
        audit = cluster.billing("audit", "--stuck-after", "1")
        assert (audit.returncode, audit.stdout.splitlines()[-1:]) == (0, ["audit: ok"]), audit.stdout + audit.stderr
    finally:
        engine.dispose()
