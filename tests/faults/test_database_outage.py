"""PostgreSQL crashes and restarts under load: the API answers 503 problem+json while it is down (never a 500
trace), the API and the worker recover without being restarted, and nothing is half-written."""
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from tests.processes import Load, assert_applied_once, assert_audit_passes, wait_for_operations, wait_until

DOWN_SECONDS = 4
OK = (200, 202)


def credits_waiting(engine) -> int:
    """Requests recording a credit that wait on a lock (the worker's statements may wait too). A keyed credit is
    one statement that stores the key's answer, then inserts the operation: pg_stat_activity cuts its text at
    track_activity_query_size (1 kB by default) before the operation's INSERT, so it is known by the key's."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                                 "query LIKE '%INSERT INTO idempotency_keys %' AND pid <> pg_backend_pid()")).scalar()


def test_postgresql_restarted_under_load_costs_503s_only_and_loses_or_doubles_nothing(stack, postgres, api, services,
                                                                                       engine):
    stack.start(concurrency=2)
    owner = api.new_user()
    workspace = api.new_workspace(owner)
    [server] = [p for p in stack.processes if p.name == "api"]
    pids = sorted(server.group()), sorted(stack.worker.group())
    credits = f"/workspaces/{workspace['id']}/billing/credits"

    def post(n: int):
        return stack.api.operator("POST", credits, json={"amountCents": 100 + n},
                                  headers={"Idempotency-Key": f"pg-{n}"})

    def send(n: int):  # two credits, then a read with a user's key (authenticated against the database)
        if n % 3 == 2:
            return stack.api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key)
        return post(n)

    with Load(send, threads=3, pause=0.05) as load:
        wait_until(lambda: len(load.answers()) >= 30, 30, "answers before the outage")
        # Credits wait inside their statements (reads pass this lock) when the server crashes under them.
        blocker = engine.connect()
        blocker.begin()
        blocker.execute(text("LOCK TABLE operations IN EXCLUSIVE MODE"))
        wait_until(lambda: credits_waiting(engine) == 3, 30, "a credit of each thread to block mid-transaction")
        crash_at = time.monotonic()
        postgres.stop("immediate")  # a crash: every session cut, transactions in flight lost
        down_at = time.monotonic()
        blocker.invalidate()
        time.sleep(DOWN_SECONDS)
        up_at = time.monotonic()
        postgres.start()

        def recovered():
            after = [a for a in load.answers() if a.sent_at > up_at]
            return len(after) >= 30 and all(a.result and a.result.status_code in OK for a in after[-30:])
        wait_until(recovered, 60, "30 answers in a row to succeed again")
    answers = load.answers()
    statuses = [a.error or a.result.status_code for a in answers]
    print(f"{len(answers)} requests: {statuses.count(503)} answered 503")

    assert [s for s in statuses if s not in (*OK, 503)] == []  # no 500, and no request left unanswered
    for a in answers:
        if a.result.status_code == 503:
            assert a.result.headers["Content-Type"] == "application/problem+json", a.result.text
            assert a.result.json["status"] == 503 and a.result.headers.get("Retry-After"), a.result.text
    assert all(a.result.status_code in OK for a in answers if a.answered_at < crash_at)
    cut = [a for a in answers if a.sent_at < crash_at < a.answered_at and a.n % 3 != 2]
    assert len(cut) >= 3 and {a.result.status_code for a in cut} == {503}
    down = [a for a in answers if down_at < a.sent_at and a.answered_at < up_at]
    assert len(down) >= 20 and {a.result.status_code for a in down} == {503}  # nothing served without the database
    assert (sorted(server.group()), sorted(stack.worker.group())) == pids, "a process was restarted"

    # Nothing half-written: a credit refused with 503 either committed whole (the same key replays its
    # operation) or not at all (the same key now records it); either way each key ends as one credit.
    engine.dispose()  # the test's own connections died with the server
    posted = {a.n: a.result for a in answers if a.n % 3 != 2}
    refused = [n for n, result in posted.items() if result.status_code == 503]
    with ThreadPoolExecutor(4) as pool:
        posted |= dict(zip(refused, pool.map(post, refused)))
    assert {n: r.status_code for n, r in posted.items() if r.status_code != 202} == {}
    ids = [r.json["id"] for r in posted.values()]
    assert len(set(ids)) == len(ids)
    with engine.connect() as conn:  # and no credit was recorded but for these keys
        recorded = conn.execute(text("SELECT count(*) FROM operations WHERE workspace_id = :w AND kind = 'credit'"),
                                {"w": workspace["id"]}).scalar()
    assert recorded == len(ids)
    wait_for_operations(engine, ids, timeout=60)  # the worker's retries, no relay: it recovered by itself
    assert_applied_once(engine, ids)
    balance = api.call("GET", f"/workspaces/{workspace['id']}/billing/balance", owner.key).json
    assert balance["balanceCents"] == 1000 + sum(100 + n for n in posted)
    assert_audit_passes(stack)
