"""Payment gateways built from settings; None where a provider is not configured."""
from worker.settings import Settings


def stripe_gateway(settings: Settings):
    return None


def x402_gateway(settings: Settings):
    return None
