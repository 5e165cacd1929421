"""Migration 0007 on a ledger written before grants: one grant per credit entry, remaining amounts replayed from
the debits in the contract's order (a refund from its own payment's grant first), and the audit finds it sound."""
import uuid

from sqlalchemy import create_engine, text

from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store.uow import UnitOfWork, make_engine
from tests.conftest import ADMIN_URL, RecordingQueue, _admin_engine
from worker.processes import migrate

SEED = """
INSERT INTO users (id, email) VALUES ('usr_1', 'one@example.com'), ('usr_2', 'two@example.com');
INSERT INTO billing_accounts (id, owner_user_id, name, balance_cents, is_user_default)
VALUES ('ba_one', 'usr_1', 'Default', 1300, true), ('ba_two', 'usr_2', 'Default', 600, true),
       ('ba_empty', 'usr_2', 'Empty', 0, false);
SET CONSTRAINTS ALL DEFERRED;
INSERT INTO workspaces (id, name, owner_user_id, default_billing_account_id) VALUES ('ws_1', 'One', 'usr_1', 'ba_one');
INSERT INTO workspace_billing_accounts (workspace_id, billing_account_id) VALUES ('ws_1', 'ba_one');
INSERT INTO checkouts (id, provider, status, workspace_id, billing_account_id, amount_cents, created_by, details)
VALUES ('chk_1', 'stripe', 'completed', 'ws_1', 'ba_one', 2000, 'usr_1', '{"refundCharges": {"ch_1": 700}}');
INSERT INTO ledger_entries (billing_account_id, kind, amount_cents, balance_after_cents, idempotency_key, reference)
VALUES ('ba_one', 'intro_credit', 1000, 1000, 'intro:usr_1', NULL),
       ('ba_one', 'credit_grant', 500, 1500, 'op:op_1', 'op_1'),
       ('ba_one', 'usage', -1200, 300, 'usage:ws_1:e1', 'e1'),
       ('ba_one', 'stripe_topup', 2000, 2300, 'stripe_checkout:chk_1', 'cs_1'),
       ('ba_one', 'refund', -700, 1600, 'stripe_refund:ch_1:700', 'ch_1'),
       ('ba_one', 'usage', -300, 1300, 'usage:ws_1:e2', 'e2'),
       ('ba_two', 'credit_grant', 100, 100, 'op:op_2', 'op_2'),
       ('ba_two', 'refund', -500, -400, 'stripe_refund:ch_9:500', 'ch_9'),
       ('ba_two', 'credit_grant', 1000, 600, 'op:op_3', 'op_3');
"""
GRANTS = text("""
SELECT g.billing_account_id, e.idempotency_key, g.source, g.category, g.amount_cents, g.remaining_cents, g.status,
       g.priority, g.expires_at
FROM grants g JOIN ledger_entries e ON e.id = g.entry_id ORDER BY g.entry_id
""")


def test_existing_credits_become_grants_with_what_the_debits_left_of_them():
    name = f"billing_test_backfill_{uuid.uuid4().hex[:8]}"
    admin = _admin_engine()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        migrate(url, "0006")
        with engine.begin() as conn:
            for statement in filter(str.strip, SEED.split(";\n")):
                conn.execute(text(statement))
        migrate(url)
        with engine.connect() as conn:
            grants = [tuple(row) for row in conn.execute(GRANTS)]
        assert grants == [
            ("ba_one", "intro:usr_1", "intro", "promotional", 1000, 0, "depleted", 50, None),
            ("ba_one", "op:op_1", "operator", "promotional", 500, 0, "depleted", 50, None),
            ("ba_one", "stripe_checkout:chk_1", "stripe", "paid", 2000, 1300, "active", 50, None),
            ("ba_two", "op:op_2", "operator", "promotional", 100, 0, "depleted", 50, None),
            ("ba_two", "op:op_3", "operator", "promotional", 1000, 600, "active", 50, None),
        ]
        audited = make_engine(url)
        services = Services(Context(uow=lambda: UnitOfWork(audited), enqueue=RecordingQueue(), config=Config()))
        assert services.audit.problems() == []
        audited.dispose()
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
