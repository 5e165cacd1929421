"""Payment gateways built from settings; None where a provider is not configured."""
from domain.providers.stripe_gateway import StripeGateway
from worker.settings import Settings, SettingsError


def stripe_gateway(settings: Settings):
    if not settings.stripe_api_key:
        return None
    return StripeGateway(settings.stripe_api_key, settings.stripe_webhook_secret, settings.stripe_api_base)


def x402_gateway(settings: Settings):
    if not settings.x402_pay_to:
        return None
    # lazy: the x402 SDK is slow to import; only a configured gateway loads it
    from domain.providers.x402_gateway import DEFAULT_FACILITATOR_URL, X402Config, X402Gateway

    try:
        return X402Gateway(X402Config(
            pay_to=settings.x402_pay_to, network=settings.x402_network, asset=settings.x402_asset,
            facilitator_url=settings.x402_facilitator_url or DEFAULT_FACILITATOR_URL,
            eip712_name=settings.x402_eip712_name, eip712_version=settings.x402_eip712_version))
    except ValueError as exc:
        raise SettingsError(f"x402: {exc}") from None
