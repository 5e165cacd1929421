"""`billing audit`: the ledger's invariants over every account, and what an operator should look at."""
from datetime import timedelta

from domain.services.context import Context
from domain.store import audit


class AuditService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def problems(self, *, stuck_after: timedelta = timedelta(minutes=10)) -> list[str]:
        """One line per broken invariant (balance != entries, a broken chain, balance != active grants while
        >= 0, a credit without its grant, a grant's draws that do not add up, a stuck operation, an auto top-up
        credited other than once exactly when it succeeded, or stuck in flight)."""
        with self._ctx.uow() as uow:
            audit.without_time_limit(uow.conn)
            return audit.problems(uow.conn, stuck_after=stuck_after)

    def notices(self) -> list[str]:
        """What breaks no invariant but wants an operator (a Stripe refund beyond its checkout)."""
        with self._ctx.uow() as uow:
            audit.without_time_limit(uow.conn)
            return audit.notices(uow.conn)
