"""`billing audit` on the test database: clean after the scenarios, exit 1 on a deliberately broken balance."""
import pytest
import sqlalchemy
from sqlalchemy import text

from domain.errors import Unavailable
from domain.services.audit import AuditService
from domain.services.context import Config, Context
from domain.store import audit as store_audit
from domain.store.uow import UnitOfWork, make_engine


def _shift_balance(engine, account_id: str, cents: int) -> None:
    with engine.begin() as conn:  # billing_accounts accept UPDATE; only ledger_entries are append-only
        conn.execute(text("UPDATE billing_accounts SET balance_cents = balance_cents + :c WHERE id = :id"),
                     {"c": cents, "id": account_id})


def test_billing_audit_passes_on_a_sound_ledger_and_fails_on_a_broken_balance(stack, api, services, engine):
    account_id = api.new_user().default_account_id
    sound = stack.billing("audit")
    assert (sound.returncode, sound.stdout.splitlines()[-1]) == (0, "audit: ok"), sound.stdout + sound.stderr

    _shift_balance(engine, account_id, +1)
    try:
        broken = stack.billing("audit")
    finally:
        _shift_balance(engine, account_id, -1)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"account {account_id}: cached balance 1001 != sum of entries 1000" in broken.stdout
    assert f"account {account_id}: balance 1001 but its active grants hold 1000" in broken.stdout
    assert broken.stdout.splitlines()[-1] == "audit: 2 problem(s)"
    assert [p for p in services.audit.problems() if account_id in p] == []


def test_billing_audit_fails_on_grants_that_do_not_hold_the_balance(stack, api, services, engine):
    account_id = api.new_user().default_account_id
    with engine.begin() as conn:  # the intro grant loses a cent that no draw took
        conn.execute(text("UPDATE grants SET remaining_cents = remaining_cents - 1 WHERE billing_account_id = :id"),
                     {"id": account_id})
    broken = stack.billing("audit")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"account {account_id}: balance 1000 but its active grants hold 999" in broken.stdout
    assert "remaining != opened - drawn" in broken.stdout
    assert broken.stdout.splitlines()[-1] == "audit: 2 problem(s)"


def test_the_audit_is_not_cut_short_by_the_per_statement_time_limit(database_url, monkeypatch):
    """A request's statement limit (BILLING_DB_STATEMENT_TIMEOUT_MS) would stop a whole-ledger check of a large
    ledger; the audit lifts it for its own transaction. A check that takes 300 ms stands in for one."""
    limited = make_engine(database_url, pool_size=1, statement_timeout_ms=100)
    ctx = Context(uow=lambda: UnitOfWork(limited), enqueue=lambda *a, **k: True, config=Config())

    def slow_check(conn, **_):
        conn.execute(text("SELECT pg_sleep(0.3)"))
        return ["slow check done"]
    monkeypatch.setattr(store_audit, "problems", slow_check)
    try:
        assert AuditService(ctx).problems() == ["slow check done"]
        with UnitOfWork(limited) as uow, pytest.raises(sqlalchemy.exc.OperationalError):  # the limit stands elsewhere
            uow.conn.execute(text("SELECT pg_sleep(0.3)"))
    finally:
        limited.dispose()


def test_a_statement_stopped_at_its_time_limit_is_named_as_that(database_url):
    limited = make_engine(database_url, pool_size=1, statement_timeout_ms=100)
    try:
        with pytest.raises(Unavailable, match="a statement ran past its time limit"), UnitOfWork(limited) as uow:
            uow.conn.execute(text("SELECT pg_sleep(0.3)"))
    finally:
        limited.dispose()


def test_billing_audit_names_a_hold_whose_workspace_does_not_exist(api, services, engine):
    """holds has no foreign keys (migration 0017): the statement that inserts a hold found its account and workspace;
    the audit checks that every hold's still exist. A released hold on a workspace id nobody has stands in for one
    written otherwise."""
    account_id = api.new_user().default_account_id
    hold = "hold_" + "0" * 32
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO holds (billing_account_id, id, workspace_id, amount_cents, status, expires_at, created_by,
                               settled_at)
            VALUES (:account, :hold, 'ws_nobody', 100, 'released', now(), 'operator', now())"""),
                     {"account": account_id, "hold": hold})
    try:
        assert [p for p in services.audit.problems() if hold in p] == [
            f"hold {hold} of account {account_id}: its account or workspace does not exist"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM holds WHERE id = :hold"), {"hold": hold})
    assert [p for p in services.audit.problems() if hold in p] == []
