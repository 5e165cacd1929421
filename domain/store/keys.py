"""The service's secret keys, kept in the database (see migrations 0005)."""
from sqlalchemy import Connection, text

_KEY = text("SELECT key FROM service_keys WHERE name = :name")


def service_key(conn: Connection, name: str) -> bytes:
    return bytes(conn.execute(_KEY, {"name": name}).scalar_one())
