"""`billing audit` on the test database: clean after the scenarios, exit 1 on a deliberately broken balance."""
from sqlalchemy import text


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
