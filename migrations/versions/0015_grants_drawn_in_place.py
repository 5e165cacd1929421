"""A debit draws from its grants in place: the update of a grant's remaining_cents changes no indexed column, so
PostgreSQL writes it as a heap-only tuple beside the old one and no index entry (1 WAL record per grant drawn
where there were 4, by EXPLAIN (ANALYZE, WAL)).

* grants_draw_order carried remaining_cents (and category) in INCLUDE, for the balance's index-only split by
  category; every usage event, capture and expiry that drew a grant wrote a new entry in each of the grants'
  three indexes. The split now reads the heap for an account's active grants (the few rows the index finds), as
  an account drawn from since the last vacuum did anyway (its pages are not all-visible).
* fillfactor 90 leaves room in each page for those in-place versions."""
from alembic import op

revision = "0015"
down_revision = "0014"

DDL = """
DROP INDEX grants_draw_order;
CREATE INDEX grants_draw_order ON grants (billing_account_id, priority, expires_at, entry_id) WHERE status = 'active';
ALTER TABLE grants SET (fillfactor = 90);
"""


def upgrade() -> None:
    op.execute(DDL)
