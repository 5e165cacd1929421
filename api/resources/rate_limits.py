"""/workspaces/{workspaceId}/rate-limits: the tier of the default account, refresh, and decisions."""
import falcon

from api import idempotency, responses as r, schemas, views
from api.doc import doc
from domain.services.rate_limits import RateLimitService

TIER_NOTES = (
    "The tier follows the workspace's default billing account at the moment of the call: `restricted` when "
    "its balance is <= 0, else by paid total (stripe_topup + x402_topup - refund): free < 500 <= tier1 < "
    "5000 <= tier2 < 50000 <= tier3 cents (BILLING_TIERS overrides the table). It is recomputed after every "
    "money movement of the account, by refresh, and by a beat job; an account without a stored tier gets one "
    "computed on read. `reason` names the rule that decided. The budget is a moving 60-second window per "
    "billing account, so workspaces sharing an account share it. If Redis is unreachable the decision fails "
    "open (default) or closed by BILLING_RATE_LIMIT_FAILURE_MODE; it is logged and counted, never a 500.")


class RateLimits:
    def __init__(self, rate_limits: RateLimitService) -> None:
        self._rate_limits = rate_limits

    @doc("Rate-limit status of the workspace, without consuming anything", who="member",
         response=r.RateLimitStatusShape, errors=(401, 404), notes=TIER_NOTES)
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        resp.media = views.rate_limit_status(self._rate_limits.status(req.context.caller, workspace_id))


class RateLimitRefresh:
    def __init__(self, rate_limits: RateLimitService) -> None:
        self._rate_limits = rate_limits

    @doc("Queue a recompute of the workspace's tier; the operation's result is the new status",
         who="owner, admin, operator", status=202, response=r.OperationShape, errors=(401, 403, 404, 409),
         notes="The result has the shape of GET .../rate-limits. Poll Location.")
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        op = self._rate_limits.request_refresh(req.context.caller, workspace_id, idempotency.scope(req))
        resp.status, resp.location = falcon.HTTP_202, f"/operations/{op.id}"
        resp.media = views.operation(op)


class RateLimitCheck:
    def __init__(self, rate_limits: RateLimitService) -> None:
        self._rate_limits = rate_limits

    @doc("Decide one use (or `cost` uses) against the budget of the workspace's default account",
         who="operator", body=schemas.CheckRateLimit, response=r.RateLimitDecisionShape,
         errors=(401, 403, 404, 409, 422),
         notes="Consumes `cost` only when all of it fits; `allowed: false` consumes nothing. " + TIER_NOTES)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        cost = schemas.load(schemas.CheckRateLimit, req).cost
        decision, tier = self._rate_limits.check(req.context.caller, workspace_id, cost)
        resp.media = views.rate_limit_decision(decision, tier)
