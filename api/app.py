"""The Falcon app: create_app(services, settings) and get_app() for the WSGI server."""
import functools
import os
from collections.abc import Callable

import falcon
import orjson

from api import errors, openapi
from api.auth import Authentication
from api.connections import closing_unread_bodies
from api.idempotency import IdempotencyKeys
from api.metrics import NO_METRICS, Metrics, MetricsPort
from api.ratelimit import ApiRateLimit
from api.resources import rate_limits, usage
from api.request_log import RequestLog
from api.resources import (billing_accounts, billing_settings, checkouts, grants, holds, operations, service,
                           spend_limits, stripe, users, webhooks, workspace_billing, workspaces, x402)
from domain.services.registry import Services

WS = "/workspaces/{workspace_id}"


def routes(s: Services, checks: dict[str, Callable[[], None]],
           metrics: MetricsPort = NO_METRICS) -> list[tuple[str, object]]:
    document = functools.cache(lambda: openapi.build(table))
    table = [
        ("/users", users.Users(s.users)),
        ("/users/me", users.Me(s.users)),
        ("/workspaces", workspaces.Workspaces(s.workspaces)),
        (WS, workspaces.WorkspaceItem(s.workspaces)),
        (WS + "/members", workspaces.Members(s.workspaces)),
        ("/billing-accounts", billing_accounts.Accounts(s.reads)),
        ("/billing-accounts/{account_id}", billing_accounts.Account(s.reads)),
        ("/billing-accounts/{account_id}/balance", billing_accounts.AccountBalance(s.reads)),
        ("/billing-accounts/{account_id}/summary", billing_accounts.AccountSummary(s.reads)),
        ("/billing-accounts/{account_id}/transactions", billing_accounts.AccountTransactions(s.reads)),
        ("/billing-accounts/{account_id}/grants", grants.AccountGrants(s.grants)),
        (WS + "/billing/accounts", workspace_billing.LinkedAccounts(s.workspaces)),
        (WS + "/billing/accounts/link", workspace_billing.LinkAccount(s.workspaces)),
        (WS + "/billing/accounts/{account_id}/default", workspace_billing.DefaultAccount(s.workspaces)),
        (WS + "/billing/accounts/{account_id}", workspace_billing.LinkedAccount(s.workspaces)),
        (WS + "/billing/balance", workspace_billing.Balance(s.reads)),
        (WS + "/billing/transactions", workspace_billing.Transactions(s.reads)),
        (WS + "/billing/summary", workspace_billing.Summary(s.reads)),
        (WS + "/billing/grants", grants.WorkspaceGrants(s.grants)),
        (WS + "/billing/holds", holds.Holds(s.holds)),
        (WS + "/billing/holds/{hold_id}", holds.HoldItem(s.holds)),
        (WS + "/billing/holds/{hold_id}/capture", holds.HoldCapture(s.holds)),
        (WS + "/billing/holds/{hold_id}/release", holds.HoldRelease(s.holds)),
        (WS + "/billing/spend-limit", spend_limits.SpendLimit(s.spend_limits)),
        (WS + "/billing/settings", billing_settings.BillingSettings(s.billing_settings)),
        (WS + "/billing/credits", workspace_billing.Credits(s.operations)),
        (WS + "/billing/usage", usage.Usage(s.usage)),
        (WS + "/billing/usage-overview", usage.UsageOverview(s.usage)),
        (WS + "/rate-limits", rate_limits.RateLimits(s.rate_limits)),
        (WS + "/rate-limits/refresh", rate_limits.RateLimitRefresh(s.rate_limits)),
        (WS + "/rate-limits/check", rate_limits.RateLimitCheck(s.rate_limits)),
        (WS + "/billing/checkout", stripe.StripeCheckout(s.stripe)),
        (WS + "/billing/checkout/x402", x402.X402Checkout(s.x402)),
        ("/webhooks/stripe", stripe.StripeWebhook(s.stripe)),
        (WS + "/webhook-endpoints", webhooks.WebhookEndpoints(s.webhooks)),
        (WS + "/webhook-endpoints/{endpoint_id}", webhooks.WebhookEndpointItem(s.webhooks)),
        (WS + "/webhook-endpoints/{endpoint_id}/deliveries", webhooks.WebhookDeliveries(s.webhooks)),
        (WS + "/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/retry",
         webhooks.WebhookDeliveryRetry(s.webhooks)),
        (WS + "/billing/checkouts", checkouts.Checkouts(s.checkouts)),
        (WS + "/billing/checkouts/{checkout_id}", checkouts.CheckoutItem(s.checkouts)),
        ("/operations/{operation_id}", operations.OperationItem(s.operations)),
        ("/health", service.Health()),
        ("/ready", service.Ready(checks)),
        ("/openapi.json", service.OpenApi(document)),
        ("/docs", service.Docs(lambda: openapi.page(document()))),
        ("/metrics", Metrics(metrics)),
    ]
    return table


def create_app(s: Services, operator_token: str | None, checks: dict[str, Callable[[], None]],
               api_rate_limit: int = 0, metrics: MetricsPort = NO_METRICS) -> falcon.App:
    """The app; api_rate_limit is each API key's requests per minute (0: off)."""
    app = falcon.App(middleware=[RequestLog(metrics), Authentication(s.users, operator_token),
                                 ApiRateLimit(s.rate_limits, s.users, api_rate_limit), IdempotencyKeys(s.idempotency)])
    app.req_options.strip_url_path_trailing_slash = True
    # Answers rendered by orjson (Falcon's documented way): a page of 50 transactions costs a fraction of the
    # standard library's time. Request bodies are read by api.json_body, never through req.media.
    json_answers = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers.update({falcon.MEDIA_JSON: json_answers})
    errors.install(app)
    for path, resource in routes(s, checks, metrics):
        app.add_route(path, resource)
    return app


def get_app():
    """The production WSGI app, wired from the environment (granian's factory `api.app:get_app`, worker.http_server)."""
    # The composition root, imported here only: create_app and the tests take their services from outside.
    from worker import health, http_server, logs, metrics, settings, tracing
    from worker.container import services

    http_server.stop_signals_reach_the_main_thread()
    logs.configure("api")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.forget_dead_workers(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    loaded = settings.load()
    tracing.setup("billing-api", loaded.otlp_endpoint)  # before the app is made: it patches falcon.App
    port = MetricsPort(metrics.observe_request,
                       lambda: metrics.render(lambda: metrics.gauges(services(), loaded.broker_url)),
                       token=loaded.metrics_token)
    return closing_unread_bodies(create_app(
        services(), settings.require(loaded.operator_token, "BILLING_OPERATOR_TOKEN"), health.checks(loaded),
        api_rate_limit=loaded.api_rate_limit, metrics=port))
