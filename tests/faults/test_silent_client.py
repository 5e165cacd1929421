"""A client of the service that goes silent inside a transaction (its host cut off, its process stuck) does not
hold its row locks for long: the server ends the session (BILLING_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS).
tests/hosts cuts a real worker host off; this is the same rule on one machine, in seconds."""
import pytest
from sqlalchemy import text

from domain.errors import Unavailable
from tests.processes import wait_until
from worker import container, settings

LOCK = text("SELECT id FROM billing_accounts WHERE id = :id FOR UPDATE")


def test_a_session_of_the_service_silent_inside_a_transaction_is_ended_its_lock_freed_and_its_work_refused(
        api, engine, database_url):
    account = api.new_user().default_account_id
    built = container.build(settings.load({"DATABASE_URL": database_url,
                                           "BILLING_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "1000"}),
                            enqueue=lambda *_, **__: True)

    def session_alive(pid: int) -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                     {"pid": pid}).scalar())
    try:
        with pytest.raises(Unavailable):
            with built.ctx.uow() as silent:
                silent.conn.execute(LOCK, {"id": account})
                pid = silent.conn.execute(text("SELECT pg_backend_pid()")).scalar()
                wait_until(lambda: not session_alive(pid), 30, "the server to end the silent session")
                with engine.connect() as conn:  # the lock went with the session: taken at once, not waited on
                    conn.execute(text("SET lock_timeout = '100ms'"))
                    assert conn.execute(LOCK, {"id": account}).scalar() == account
                silent.conn.execute(text("SELECT 1"))  # back from its silence: the transaction is gone
    finally:
        for unit in (built.ctx.uow, built.ctx.read):
            with unit() as uow:
                built_engine = uow.conn.engine
            built_engine.dispose()
