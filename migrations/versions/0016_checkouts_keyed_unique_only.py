"""Two of the checkouts' unique indexes hold only the rows they constrain, as holds' and operations' scopes do
(0013, 0014): (created_by, idempotency_scope) the checkouts created under an Idempotency-Key, (network, payer,
nonce) the x402 payments. A Stripe checkout without a key had a NULL entry in each, written when it was created
and again when its payment completed it (that update changes the status and the details, which other indexes
cover, so it is never heap-only and writes an entry in every index): 2 of the 6 index entries of each completion.
The service's ON CONFLICT DO NOTHING names no index, so it arbitrates on the partial ones as before."""
from alembic import op

revision = "0016"
down_revision = "0015"

DDL = """
ALTER TABLE checkouts DROP CONSTRAINT checkouts_idempotency_scope;
CREATE UNIQUE INDEX checkouts_idempotency_scope ON checkouts (created_by, idempotency_scope)
    WHERE idempotency_scope IS NOT NULL;
ALTER TABLE checkouts DROP CONSTRAINT checkouts_x402_payment;
CREATE UNIQUE INDEX checkouts_x402_payment ON checkouts (network, payer, nonce) WHERE nonce IS NOT NULL;
"""


def upgrade() -> None:
    op.execute(DDL)
