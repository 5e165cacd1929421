"""Unique indexes that hold only the rows they constrain (migrations 0014, 0016): a row without the key writes no
entry there, and the service's inserts still find a repeat of the key. Each insert is in a transaction that is
rolled back; the index's pages, which a rollback leaves, tell whether it was written."""
import uuid

from sqlalchemy import text

from domain.ids import new_id
from domain.store import checkouts, operations


def _grew(conn, index: str, insert: str, params: dict) -> int:
    size = text(f"SELECT pg_relation_size('{index}')")
    before = conn.execute(size).scalar()
    conn.execute(text(insert), params)
    return conn.execute(size).scalar() - before


def test_an_operation_without_a_scope_is_not_in_the_scopes_index(engine, api):
    """Most operations have none (those sent without an Idempotency-Key); one queued under a
    scope twice is the same operation (the ON CONFLICT names the partial index: PostgreSQL refuses one that matches
    no index)."""
    ws = api.new_workspace(api.new_user())["id"]
    with engine.connect() as conn:
        grew = _grew(conn, "operations_idempotency_scope",
                     "INSERT INTO operations (id, kind, caller, workspace_id, payload) "
                     "SELECT 'op_' || md5(random()::text), 'credit', 'operator', :ws, '{}' FROM generate_series(1, 3000)",
                     {"ws": ws})
        made = [operations.insert_operation(conn, operation_id=new_id("op"), kind="credit", caller="operator",
                                            idempotency_scope=f"scope-{ws}", workspace_id=ws, billing_account_id=None,
                                            payload={}) for _ in range(2)]
        conn.rollback()
    assert grew == 0
    assert [created for _, created in made] == [True, False] and made[0][0].id == made[1][0].id


def test_a_stripe_checkout_without_a_key_is_in_neither_the_scopes_nor_the_x402_payments_index(engine, api):
    owner = api.new_user()
    ws = api.new_workspace(owner)["id"]
    account = owner.default_account_id
    rows = ("INSERT INTO checkouts (id, provider, workspace_id, billing_account_id, amount_cents, created_by, "
            "provider_ref) SELECT 'chk_' || md5(random()::text), 'stripe', :ws, :account, 500, 'operator', "
            "'cs_' || md5(random()::text) FROM generate_series(1, 3000)")
    with engine.connect() as conn:
        grew = [_grew(conn, index, rows, {"ws": ws, "account": account})
                for index in ("checkouts_idempotency_scope", "checkouts_x402_payment")]
        terms = {"provider": "stripe", "workspace_id": ws, "billing_account_id": account, "amount_cents": 500,
                 "created_by": owner.id}
        keyed = [checkouts.insert_checkout(conn, checkout_id=new_id("chk"), idempotency_scope="key-1", **terms)
                 for _ in range(2)]
        payment = {"network": "base-sepolia", "payer": "0x" + "1" * 40, "nonce": "0x" + uuid.uuid4().hex}
        paid = [checkouts.insert_checkout(conn, checkout_id=new_id("chk"), **(terms | {"provider": "x402"}), **payment)
                for _ in range(2)]
        conn.rollback()
    assert grew == [0, 0]
    assert [created for _, created in keyed] == [True, False] and keyed[0][0].id == keyed[1][0].id
    assert [created for _, created in paid] == [True, False] and paid[0][0].id == paid[1][0].id
