"""Rate-limit tiers that follow the workspace's default account, and decisions against its budget."""
import logging
from datetime import timedelta

from domain import times, tiers
from domain.errors import NotFound
from domain.ids import looks_like, new_id
from domain.models import AccountTier, Caller, Operation, RateLimitStatus
from domain.names import Task
from domain.ratelimit import Decision, FailurePolicy, Limiter
from domain.services import access
from domain.services.context import Context
from domain.store import operations, prepared, tiers as store
from domain.store.limiter import memory_limiter
from domain.store.uow import Connection

log = logging.getLogger(__name__)



def account_key(account_id: str) -> str:
    return f"account:{account_id}"


def compute(conn: Connection, account_id: str, table: tiers.TierTable) -> AccountTier | None:
    """Decide the account's tier from one snapshot of the ledger and store it (a newer one stands)."""
    found = store.inputs(conn, account_id)
    if found is None:
        return None
    balance, paid, last_entry_id = found
    decision = tiers.decide(balance, paid, table)
    return store.save(conn, account_id, tier=decision.tier, reason=decision.reason, paid_cents=paid,
                      balance_cents=balance, as_of_entry_id=last_entry_id)


def current(conn: Connection, account_id: str, table: tiers.TierTable) -> AccountTier:
    """The stored tier; computed now when the account has none yet (a new default account)."""
    tier = store.get(conn, account_id) or compute(conn, account_id, table)
    if tier is None:
        raise NotFound("billing account not found")
    return tier


class RateLimitService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._limiter: Limiter = ctx.limiter or FailurePolicy(memory_limiter())

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    def status(self, caller: Caller, workspace_id: str) -> RateLimitStatus:
        workspace_id, account_id, tier = self._tier_of(caller, workspace_id)
        rpm = self._ctx.config.tiers.requests_per_minute(tier.tier)
        return _status(workspace_id, tier, self._limiter.peek(account_key(account_id), rpm))

    def check(self, caller: Caller, workspace_id: str, cost: int) -> tuple[Decision, str]:
        """Consume `cost` from the budget of the workspace's default account: (decision, tier)."""
        if not caller.is_operator:
            with self._ctx.uow() as uow:
                access.refuse_user(uow.conn, caller, workspace_id, "only the operator checks rate limits")
        account_id, tier = self._binding(workspace_id)
        rpm = self._ctx.config.tiers.requests_per_minute(tier)
        return self._limiter.hit(account_key(account_id), rpm, cost), tier

    def api_request(self, key: str, per_minute: int) -> Decision:
        """One request of an API key against the API's own limit."""
        return self._limiter.hit(f"api:{key}", per_minute)

    def _binding(self, workspace_id: str) -> tuple[str, str]:
        """(default account, its tier) of the workspace in one prepared statement; the tier computed and
        stored, in a transaction, only when the account has none yet."""
        if not looks_like("ws", workspace_id):
            raise NotFound("workspace not found")
        with self._ctx.raw_read() as conn:
            found = prepared.tier_of_workspace(conn, workspace_id)
        if found is None:
            raise NotFound("workspace not found")
        account_id, tier = found
        if tier is None:
            with self._ctx.uow() as uow:
                tier = current(uow.conn, account_id, self._ctx.config.tiers).tier
                uow.commit()
        return account_id, tier

    def _tier_of(self, caller: Caller, workspace_id: str) -> tuple[str, str, AccountTier]:
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id).workspace
            tier = current(uow.conn, workspace.default_billing_account_id, self._ctx.config.tiers)
            uow.commit()
        return workspace.id, workspace.default_billing_account_id, tier

    def request_refresh(self, caller: Caller, workspace_id: str, idempotency_scope: str | None) -> Operation:
        """Queue a recompute of the tier of the workspace's current default account (once per scope)."""
        with self._ctx.uow() as uow:
            workspace = access.workspace(uow.conn, caller, workspace_id, manage=True,
                                         operator_manages=True).workspace
            op, created = operations.insert_operation(
                uow.conn, operation_id=new_id("op"), kind="tier_refresh", caller=caller.name,
                idempotency_scope=idempotency_scope, workspace_id=workspace.id,
                billing_account_id=workspace.default_billing_account_id, payload={},
                trace_parent=self._ctx.trace_parent())
            if created:
                uow.after_commit(lambda: self._ctx.enqueue(Task.APPLY_TIER_OPERATION, operation_id=op.id))
            uow.commit()
        return op

    def recompute(self, account_id: str) -> str | None:
        """Recompute and store one account's tier (after a money movement); safe to repeat."""
        with self._ctx.uow() as uow:
            tier = compute(uow.conn, account_id, self._ctx.config.tiers)
            uow.commit()
        return tier.tier if tier else None

    def refresh_stale(self, limit: int = 500) -> int:
        """Recompute tiers older than the configured age or than their account's newest entry (a beat job)."""
        with self._ctx.uow() as uow:
            due = store.stale(uow.conn, older_than=timedelta(seconds=self._ctx.config.tier_max_age_seconds),
                              limit=limit)
        for account_id in due:
            self.recompute(account_id)
        return len(due)

    def refresh_all(self, page: int = 500) -> int:
        """Recompute and store every billing account's tier now, page by page (an operator's command)."""
        done, after = 0, ""
        while True:
            with self._ctx.uow() as uow:
                account_ids = store.account_ids(uow.conn, after=after, limit=page)
            for account_id in account_ids:
                self.recompute(account_id)
            done += len(account_ids)
            if len(account_ids) < page:
                return done
            after = account_ids[-1]


def refresh_in(conn: Connection, op: Operation, ctx: Context) -> dict:
    """Apply a tier_refresh operation: the account's tier recomputed, the workspace's new status."""
    tier = compute(conn, op.billing_account_id, ctx.config.tiers)
    if tier is None:
        raise NotFound("billing account not found")
    rpm = ctx.config.tiers.requests_per_minute(tier.tier)
    limiter = ctx.limiter or FailurePolicy(memory_limiter())
    return status_json(_status(op.workspace_id, tier, limiter.peek(account_key(op.billing_account_id), rpm)))


def _status(workspace_id: str, tier: AccountTier, decision: Decision) -> RateLimitStatus:
    return RateLimitStatus(workspace_id=workspace_id, billing_account_id=tier.billing_account_id, tier=tier,
                           requests_per_minute=decision.limit, remaining=decision.remaining,
                           reset_seconds=decision.reset_seconds)


def status_json(s: RateLimitStatus) -> dict:
    """The contract's rate-limit status: GET .../rate-limits and a refresh operation's result."""
    computed = times.rfc3339(s.tier.computed_at)
    return {"workspaceId": s.workspace_id, "billingAccountId": s.billing_account_id, "tier": s.tier.tier,
            "limits": {"requestsPerMinute": s.requests_per_minute}, "remaining": s.remaining,
            "resetSeconds": s.reset_seconds, "computedAt": computed, "reason": s.tier.reason}
