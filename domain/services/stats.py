"""What operators watch: unfinished operations (the outbox), checkouts by provider and state, pending webhook
deliveries, auto top-ups by state, and the age of the oldest of each."""
from domain.services.context import Context
from domain.store import auto_top_ups, stats, webhooks


class StatsService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def snapshot(self) -> dict:
        with self._ctx.uow() as uow:
            pending, oldest, overdue = webhooks.pending(uow.conn)
            return {"backlog": stats.operation_backlog(uow.conn), "checkouts": stats.checkout_counts(uow.conn),
                    "oldest_unfinished_seconds": stats.oldest_unfinished_seconds(uow.conn),
                    "oldest_pending_checkouts": stats.oldest_pending_checkouts(uow.conn),
                    "webhooks_pending": pending, "webhooks_oldest_pending_seconds": oldest,
                    "webhooks_overdue_seconds": max(overdue, 0.0),
                    "auto_top_ups": auto_top_ups.counts(uow.conn),
                    "auto_top_ups_oldest_in_flight_seconds": auto_top_ups.oldest_in_flight_seconds(uow.conn)}
