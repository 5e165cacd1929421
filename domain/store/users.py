"""User and API-key SQL."""
from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from domain.models import User
from domain.store.tables import api_keys, billing_accounts, users

_u = users.c
_a = billing_accounts.c


def _query():
    return (select(users, _a.id.label("default_billing_account_id"))
            .outerjoin(billing_accounts, (_a.owner_user_id == _u.id) & _a.is_user_default))


def _user(row) -> User:
    return User(id=row["id"], email=row["email"], name=row["name"], created_at=row["created_at"],
                default_billing_account_id=row["default_billing_account_id"])


def insert_user(conn: Connection, user_id: str, email: str, name: str | None) -> bool:
    """Insert; False when the email is taken (case-insensitively)."""
    stmt = (pg_insert(users).values(id=user_id, email=email, name=name)
            .on_conflict_do_nothing(index_elements=[func.lower(_u.email)]).returning(_u.id))
    return conn.execute(stmt).first() is not None


def get(conn: Connection, user_id: str) -> User | None:
    row = conn.execute(_query().where(_u.id == user_id)).mappings().first()
    return _user(row) if row else None


def without_default_account(conn: Connection, limit: int) -> list[str]:
    query = (select(_u.id).outerjoin(billing_accounts, (_a.owner_user_id == _u.id) & _a.is_user_default)
             .where(_a.id.is_(None)).limit(limit))
    return list(conn.execute(query).scalars())


def insert_api_key(conn: Connection, key_id: str, user_id: str, key_hash: bytes) -> None:
    conn.execute(api_keys.insert().values(id=key_id, user_id=user_id, key_hash=key_hash))


_USER_FOR_KEY = text("SELECT user_id FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL")


def user_id_for_key(conn: Connection, key_hash: bytes) -> str | None:
    return conn.execute(_USER_FOR_KEY, {"key_hash": key_hash}).scalar()


def revoke_keys(conn: Connection, user_id: str) -> int:
    k = api_keys.c
    return conn.execute(api_keys.update().where(k.user_id == user_id, k.revoked_at.is_(None))
                        .values(revoked_at=func.now())).rowcount
