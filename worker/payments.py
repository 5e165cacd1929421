"""Payment gateways built from settings; None where a provider is not configured."""
from worker.settings import Settings


def stripe_gateway(settings: Settings):
    if not settings.stripe_api_key:
        return None
    from domain.providers.stripe_gateway import StripeGateway

    return StripeGateway(settings.stripe_api_key, settings.stripe_webhook_secret, settings.stripe_api_base)


def x402_gateway(settings: Settings):
    return None
