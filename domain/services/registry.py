"""All services, built once from one context."""
from domain.providers.webhook_sender import WebhookSender
from domain.services.audit import AuditService
from domain.services.auto_top_ups import AutoTopUpService
from domain.services.billing_settings import BillingSettingsService
from domain.services.checkouts import CheckoutService
from domain.services.context import Context
from domain.services.credit_batches import CreditBatches
from domain.services.grants import GrantService
from domain.services.holds import HoldService
from domain.services.idempotency import IdempotencyService
from domain.services.operations import OperationService
from domain.services.rate_limits import RateLimitService
from domain.services.reads import ReadService
from domain.services.relay import OutboxRelay
from domain.services.spend_limits import SpendLimitService
from domain.services.stats import StatsService
from domain.services.stripe_checkout import StripeCheckoutService
from domain.services.usage import UsageService
from domain.services.users import UserService
from domain.services.webhook_delivery import WebhookDeliveryService
from domain.services.webhook_endpoints import WebhookEndpointService
from domain.services.workspaces import WorkspaceService
from domain.services.x402_checkout import X402CheckoutService


class Services:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.users = UserService(ctx)
        self.workspaces = WorkspaceService(ctx)
        self.reads = ReadService(ctx)
        self.grants = GrantService(ctx)
        self.holds = HoldService(ctx)
        self.spend_limits = SpendLimitService(ctx)
        self.billing_settings = BillingSettingsService(ctx)
        self.idempotency = IdempotencyService(ctx)
        self.operations = OperationService(ctx, self.idempotency, CreditBatches(ctx))
        self.relay = OutboxRelay(ctx)
        self.audit = AuditService(ctx)
        self.checkouts = CheckoutService(ctx)
        self.stripe = StripeCheckoutService(ctx)
        self.auto_top_ups = AutoTopUpService(ctx)
        self.usage = UsageService(ctx)
        self.rate_limits = RateLimitService(ctx)
        self.x402 = X402CheckoutService(ctx)
        self.stats = StatsService(ctx)
        sender = ctx.webhooks or WebhookSender(allow_private=ctx.config.webhooks_allow_private,
                                               timeout_seconds=ctx.config.webhook_timeout_seconds)
        self.webhooks = WebhookEndpointService(ctx, sender)
        self.webhook_delivery = WebhookDeliveryService(ctx, sender)
