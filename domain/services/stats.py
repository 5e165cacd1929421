"""What operators watch: unfinished operations (the outbox) and checkouts by provider and state, and the
age of the oldest of each."""
from domain.services.context import Context
from domain.store import stats


class StatsService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def snapshot(self) -> dict:
        with self._ctx.uow() as uow:
            return {"backlog": stats.operation_backlog(uow.conn), "checkouts": stats.checkout_counts(uow.conn),
                    "oldest_unfinished_seconds": stats.oldest_unfinished_seconds(uow.conn),
                    "oldest_pending_checkouts": stats.oldest_pending_checkouts(uow.conn)}
