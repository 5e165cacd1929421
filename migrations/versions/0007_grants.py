"""Credit grants: every credit is a grant with a category, a priority and maybe an expiry; debits draw from
the grants in order (lower priority first, then the earliest expiresAt, none last, then the oldest); grant_draws
keeps each grant's remaining amount after every movement, so a balance as of any instant can tell its grants
apart. The `expiry` entry kind. An index for the balance as of an instant: the last entry at or before it.

Existing accounts get one grant per credit entry, their remaining amounts replayed from the account's debits
in that order (a refund draws from its own payment's grant first), each draw recorded. Both tables carry
billing_account_id in their keys: an account's grants live with its entries.
"""
import uuid

from alembic import op
from sqlalchemy import text

revision = "0007"
down_revision = "0006"

DDL = """
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind CHECK (kind IN ('intro_credit', 'credit_grant',
    'stripe_topup', 'x402_topup', 'usage', 'refund', 'adjustment', 'expiry')) NOT VALID;
ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_kind;

-- The balance as of an instant: the last entry created at or before it, from the index alone.
CREATE INDEX ledger_entries_account_created ON ledger_entries (billing_account_id, created_at, id)
    INCLUDE (balance_after_cents);

CREATE TABLE grants (
    billing_account_id TEXT NOT NULL REFERENCES billing_accounts (id),
    id TEXT NOT NULL,
    entry_id BIGINT NOT NULL,  -- the credit that made it
    source TEXT NOT NULL,
    category TEXT NOT NULL,
    priority INTEGER NOT NULL,
    expires_at TIMESTAMPTZ,
    amount_cents BIGINT NOT NULL,
    opened_cents BIGINT NOT NULL,  -- below amount when the credit first paid off a negative balance
    remaining_cents BIGINT NOT NULL,
    status TEXT NOT NULL,
    closed_entry_id BIGINT,  -- the entry that took it to zero: a debit, or its expiry
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (billing_account_id, id),
    CONSTRAINT grants_one_per_entry UNIQUE (billing_account_id, entry_id),
    CONSTRAINT grants_source CHECK (source IN ('intro', 'operator', 'stripe', 'x402')),
    CONSTRAINT grants_category CHECK (category IN ('paid', 'promotional')),
    CONSTRAINT grants_priority CHECK (priority BETWEEN 0 AND 100),
    CONSTRAINT grants_amounts CHECK (amount_cents > 0 AND opened_cents BETWEEN 0 AND amount_cents
                                     AND remaining_cents BETWEEN 0 AND opened_cents),
    CONSTRAINT grants_status CHECK (status IN ('active', 'depleted', 'expired')),
    CONSTRAINT grants_active_holds_money CHECK ((status = 'active') = (remaining_cents > 0)),
    CONSTRAINT grants_closed_by_an_entry CHECK ((status = 'active') = (closed_entry_id IS NULL))
);
-- A debit's draw: the account's active grants in the contract's order (NULL expiresAt sorts last).
CREATE INDEX grants_draw_order ON grants (billing_account_id, priority, expires_at, entry_id)
    INCLUDE (remaining_cents, category) WHERE status = 'active';
-- The beat job's scan for grants due to expire, over every account.
CREATE INDEX grants_expiring ON grants (expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;

CREATE TABLE grant_draws (
    billing_account_id TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    entry_id BIGINT NOT NULL,  -- the (last) entry of the movement that drew
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    remaining_after_cents BIGINT NOT NULL CHECK (remaining_after_cents >= 0),
    PRIMARY KEY (billing_account_id, grant_id, entry_id),
    FOREIGN KEY (billing_account_id, grant_id) REFERENCES grants (billing_account_id, id)
);
CREATE TRIGGER grant_draws_append_only BEFORE UPDATE OR DELETE ON grant_draws
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_refuse_change();
CREATE TRIGGER grant_draws_no_truncate BEFORE TRUNCATE ON grant_draws
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change();
"""

SOURCES = {"intro_credit": ("intro", "promotional"), "credit_grant": ("operator", "promotional"),
           "adjustment": ("operator", "promotional"), "stripe_topup": ("stripe", "paid"),
           "x402_topup": ("x402", "paid")}

_ACCOUNTS = text("SELECT id FROM billing_accounts ORDER BY id")
_ENTRIES = text("""
SELECT id, kind, amount_cents, balance_after_cents, idempotency_key, reference, created_at
FROM ledger_entries WHERE billing_account_id = :account ORDER BY id
""")
# A Stripe refund's payment: the checkout whose refunded charges name it, whose credit key is known.
_REFUNDED_CHECKOUTS = text("""
SELECT charge, 'stripe_checkout:' || c.id AS credit_key
FROM checkouts c, jsonb_object_keys(c.details -> 'refundCharges') AS charge
WHERE c.provider = 'stripe' AND jsonb_typeof(c.details -> 'refundCharges') = 'object'
""")
_INSERT_GRANT = text("""
INSERT INTO grants (billing_account_id, id, entry_id, source, category, priority, expires_at, amount_cents,
                    opened_cents, remaining_cents, status, closed_entry_id, created_at)
VALUES (:account, :id, :entry_id, :source, :category, 50, NULL, :amount, :opened, :remaining, :status,
        :closed_entry_id, :created_at)
""")
_INSERT_DRAW = text("""
INSERT INTO grant_draws (billing_account_id, grant_id, entry_id, amount_cents, remaining_after_cents)
VALUES (:account, :grant_id, :entry_id, :amount, :remaining_after)
""")


class _Replay:
    """One account's grants as its entries made and drew them; every backfilled grant has priority 50 and no
    expiry, so the contract's order is the oldest first."""

    def __init__(self, account: str) -> None:
        self.account, self.grants, self.draws, self.by_key = account, [], [], {}

    def credit(self, entry) -> None:
        source, category = SOURCES[entry.kind]
        opened = max(0, min(entry.amount_cents, entry.balance_after_cents))
        grant = {"account": self.account, "id": f"grt_{uuid.uuid4().hex}", "entry_id": entry.id, "source": source,
                 "category": category, "amount": entry.amount_cents, "opened": opened, "remaining": opened,
                 "created_at": entry.created_at, "closed_entry_id": None if opened else entry.id}
        self.grants.append(grant)
        self.by_key[entry.idempotency_key] = grant

    def debit(self, entry, first_key: str | None) -> None:
        owed = -entry.amount_cents
        first = self.by_key.get(first_key)
        for grant in ([first] if first else []) + [g for g in self.grants if g is not first]:
            if owed == 0:
                break
            take = min(owed, grant["remaining"])
            if take == 0:
                continue
            grant["remaining"] -= take
            owed -= take
            if grant["remaining"] == 0:
                grant["closed_entry_id"] = entry.id
            self.draws.append({"account": self.account, "grant_id": grant["id"], "entry_id": entry.id,
                               "amount": take, "remaining_after": grant["remaining"]})

    def write(self, conn) -> None:
        for grant in self.grants:
            grant["status"] = "active" if grant["remaining"] else "depleted"
        if self.grants:
            conn.execute(_INSERT_GRANT, self.grants)
        if self.draws:
            conn.execute(_INSERT_DRAW, self.draws)


def backfill(conn) -> None:
    refunded = dict(conn.execute(_REFUNDED_CHECKOUTS).all())
    for account in conn.execute(_ACCOUNTS).scalars().all():
        replay = _Replay(account)
        for entry in conn.execute(_ENTRIES, {"account": account}):
            if entry.amount_cents > 0:
                replay.credit(entry)
            else:
                replay.debit(entry, refunded.get(entry.reference) if entry.kind == "refund" else None)
        replay.write(conn)


def upgrade() -> None:
    op.execute(DDL)
    backfill(op.get_bind())
