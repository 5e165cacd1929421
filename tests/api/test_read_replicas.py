"""Read replicas: lists, summaries and the usage overview come from a streaming replica within
BILLING_READ_MAX_LAG_MS; the balance always from the primary; a replica lagging past the limit, or gone,
is skipped. A real primary and a real `pg_basebackup -R` replica on private ports; replay paused with
pg_wal_replay_pause() makes the replica's answers tell it apart from the primary."""
import pytest
from falcon import testing
from prometheus_client import REGISTRY
from sqlalchemy import NullPool, create_engine, text

from api.app import create_app
from domain.store.replicas import measure_lag_ms
from tests.conftest import RecordingQueue
from tests.factories import OPERATOR_TOKEN, Api, post
from tests.postgres_server import PostgresServer, StandbyServer, build_template, remove_template
from tests.processes import wait_until
from worker import container, settings


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("replicas")
    template = build_template(log_dir)
    primary = PostgresServer(template, log_dir)
    standby = StandbyServer(primary, log_dir)
    yield primary, standby
    standby.remove()
    primary.remove()
    remove_template(template)


@pytest.fixture(scope="module")
def admin(servers):
    """Superuser connections to the primary and the replica, outside the service's pools."""
    engines = [create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"), poolclass=NullPool,
                             isolation_level="AUTOCOMMIT") for server in servers]  # NullPool: a restart breaks none
    yield engines
    for engine in engines:
        engine.dispose()


@pytest.fixture
def service(servers):
    """service(max_lag_ms): the app over the primary and its replica, as worker.container wires it."""
    built_ones = []

    def build(max_lag_ms: int) -> tuple[Api, object]:
        primary, standby = servers
        built = container.build(settings.load({"DATABASE_URL": primary.url, "DATABASE_READ_URL": standby.url,
                                               "BILLING_READ_MAX_LAG_MS": str(max_lag_ms)}),
                                enqueue=RecordingQueue())
        built_ones.append(built)
        return Api(testing.TestClient(create_app(built, OPERATOR_TOKEN, {"database": lambda: None}))), built

    yield build
    for built in built_ones:
        built.ctx.lagging.__self__.dispose()  # the ReadRouter's replica engines
        for unit in (built.ctx.uow, built.ctx.read):
            with unit() as uow:
                engine = uow.conn.engine
            engine.dispose()


def scalar(engine, sql: str):
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def replayed_everything(admin) -> None:
    primary, standby = admin
    written = scalar(primary, "SELECT pg_current_wal_lsn()")
    wait_until(lambda: scalar(standby, f"SELECT pg_last_wal_replay_lsn() >= '{written}'"), 30,
               "the replica to replay the primary's WAL")


class ReplayPaused:
    """Replay stopped on the replica for the block: it keeps receiving WAL and answers from what it had."""

    def __init__(self, admin) -> None:
        self.standby = admin[1]

    def __enter__(self) -> None:
        scalar(self.standby, "SELECT pg_wal_replay_pause()")
        wait_until(lambda: scalar(self.standby, "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 30,
                   "replay to pause")

    def __exit__(self, *exc) -> None:
        scalar(self.standby, "SELECT pg_wal_replay_resume()")


def served(database: str) -> float:
    return REGISTRY.get_sample_value("billing_db_reads_total", {"database": database}) or 0.0


def world(api: Api, admin):
    owner = api.new_user()
    ws = api.new_workspace(owner)
    replayed_everything(admin)
    return owner, ws


def read_all(api: Api, owner, ws) -> dict:
    base = f"/workspaces/{ws['id']}/billing"
    answers = {name: api.call("GET", f"{base}/{name}", owner.key) for name in
               ("transactions", "summary", "balance", "usage-overview")}
    answers["account-transactions"] = api.call(
        "GET", f"/billing-accounts/{owner.default_account_id}/transactions", owner.key)
    answers["account-summary"] = api.call("GET", f"/billing-accounts/{owner.default_account_id}/summary", owner.key)
    assert all(a.status_code == 200 for a in answers.values()), {k: a.text for k, a in answers.items()}
    return {name: answer.json for name, answer in answers.items()}


def test_lists_and_summaries_come_from_the_replica_and_the_balance_from_the_primary(service, admin):
    api, services = service(max_lag_ms=600_000)  # the paused replica stays within it
    owner, ws = world(api, admin)
    with ReplayPaused(admin):
        before = served("replica1")
        post(services, ws["defaultBillingAccountId"], 2500)
        seen = read_all(api, owner, ws)
        assert seen["balance"]["balanceCents"] == 3500
        assert len(seen["transactions"]["data"]) == len(seen["account-transactions"]["data"]) == 1
        assert seen["summary"]["totalCreditedCents"] == seen["account-summary"]["totalCreditedCents"] == 1000
        assert served("replica1") - before == 5  # the two pages, the two summaries and the usage overview
    replayed_everything(admin)
    assert read_all(api, owner, ws)["summary"]["totalCreditedCents"] == 3500


def test_a_replica_lagging_past_the_limit_is_skipped_for_the_primary(service, admin):
    max_lag_ms = 200
    owner, ws = world(service(max_lag_ms)[0], admin)
    with ReplayPaused(admin):
        post_and_receive(service(max_lag_ms)[1], ws, admin)
        wait_until(lambda: measure_lag(admin) > max_lag_ms, 30, "the paused replica to lag past the limit")
        api, _ = service(max_lag_ms)  # measures afresh: no measurement from before the write arrived
        before = served("primary")
        seen = read_all(api, owner, ws)
        assert len(seen["transactions"]["data"]) == len(seen["account-transactions"]["data"]) == 2
        assert seen["summary"]["totalCreditedCents"] == seen["account-summary"]["totalCreditedCents"] == 3500
        assert served("primary") - before == 5


def post_and_receive(services, ws, admin) -> None:
    """A credit on the primary, its WAL received by the (paused) replica."""
    post(services, ws["defaultBillingAccountId"], 2500)
    written = scalar(admin[0], "SELECT pg_current_wal_lsn()")
    wait_until(lambda: scalar(admin[1], f"SELECT pg_last_wal_receive_lsn() >= '{written}'"), 30,
               "the replica to receive the write")


def measure_lag(admin) -> float:
    with admin[1].connect() as conn:
        return measure_lag_ms(conn)


def test_a_caught_up_replica_of_an_idle_primary_serves_though_its_last_replay_is_old(service, admin):
    max_lag_ms = 200
    owner, ws = world(service(max_lag_ms)[0], admin)
    wait_until(lambda: scalar(admin[1], "SELECT clock_timestamp() - pg_last_xact_replay_timestamp() "
                                        f"> interval '{max_lag_ms} milliseconds'"), 30, "the last replay to age")
    assert measure_lag(admin) == 0
    api, _ = service(max_lag_ms)
    before = served("replica1")
    read_all(api, owner, ws)
    assert served("replica1") - before == 5


def test_what_a_caller_just_created_is_found_though_the_replica_has_not_replayed_it(service, admin):
    api, _ = service(max_lag_ms=600_000)
    with ReplayPaused(admin):
        owner = api.new_user()
        ws = api.new_workspace(owner)
        seen = read_all(api, owner, ws)  # the replica answers 404: the primary is asked
        assert seen["summary"]["totalCreditedCents"] == 1000
        assert seen["transactions"]["data"][0]["kind"] == "intro_credit"


def test_a_replica_that_stops_is_skipped_and_the_primary_answers(servers, service, admin):
    api, services = service(max_lag_ms=600_000)
    owner, ws = world(api, admin)
    read_all(api, owner, ws)  # the replica's pool holds a connection now
    standby = servers[1]
    standby.stop()
    try:
        post(services, ws["defaultBillingAccountId"], 2500)
        assert read_all(api, owner, ws)["summary"]["totalCreditedCents"] == 3500
    finally:
        standby.start()
    replayed_everything(admin)


def test_a_key_revoked_while_the_replica_lags_reads_no_page_from_it(service, admin):
    """A page may lag; who may read it may not: a user's key is checked on the primary, so a revocation the
    replica has not replayed yet already answers 401."""
    api, _ = service(max_lag_ms=600_000)
    owner, ws = world(api, admin)
    page = f"/workspaces/{ws['id']}/billing/transactions"
    assert api.call("GET", page, owner.key).status_code == 200
    with ReplayPaused(admin):
        with admin[0].connect() as conn:
            conn.execute(text("UPDATE api_keys SET revoked_at = now() WHERE user_id = :u"), {"u": owner.id})
        assert scalar(admin[1], "SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL "
                      f"AND user_id = '{owner.id}'") == 0  # the replica still holds the key as live
        assert api.call("GET", page, owner.key).status_code == 401
