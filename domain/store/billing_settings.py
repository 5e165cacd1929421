"""Billing settings SQL: one row per workspace (lowBalanceCents; auto top-up adds its columns)."""
from sqlalchemy import Connection, text

_GET = text("SELECT low_balance_cents FROM billing_settings WHERE workspace_id = :workspace_id")
_PUT_LOW_BALANCE = text("""
INSERT INTO billing_settings AS s (workspace_id, low_balance_cents) VALUES (:workspace_id, :low)
ON CONFLICT (workspace_id) DO UPDATE SET low_balance_cents = EXCLUDED.low_balance_cents, updated_at = now()
""")


def low_balance_cents(conn: Connection, workspace_id: str) -> int | None:
    """The workspace's lowBalanceCents; None when unset."""
    return conn.execute(_GET, {"workspace_id": workspace_id}).scalar()


def put_low_balance(conn: Connection, workspace_id: str, cents: int | None) -> None:
    conn.execute(_PUT_LOW_BALANCE, {"workspace_id": workspace_id, "low": cents})
