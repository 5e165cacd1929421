"""Readiness checks of the database and the broker."""
from collections.abc import Callable

from kombu import Connection
from sqlalchemy import text

from worker.container import services
from worker.settings import Settings


def _database() -> None:
    with services().ctx.uow() as uow:
        uow.conn.execute(text("SELECT 1"))


def _broker(url: str) -> Callable[[], None]:
    def check() -> None:
        with Connection(url, connect_timeout=2, transport_options={"socket_timeout": 2}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    return check


def checks(settings: Settings) -> dict[str, Callable[[], None]]:
    return {"database": _database, "broker": _broker(settings.broker_url or "memory://")}
