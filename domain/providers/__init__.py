"""Gateways to payment providers: the only modules that import stripe or x402."""
