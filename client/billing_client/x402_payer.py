"""The payer's side of an x402 top-up, through the x402 SDK's client (the `x402` extra)."""
from typing import Any

import httpx
from x402 import x402ClientSync
from x402.http.x402_http_client import x402HTTPClientSync
from x402.mechanisms.evm.exact import register_exact_evm_client


def payer(signer: Any, amount_cents: int) -> x402HTTPClientSync:
    """The SDK's HTTP client for `signer`: an x402ClientSync as configured, or an EVM signer (an eth-account
    account or an x402 ClientEvmSigner) whose spend cap is this payment, so no other terms get signed."""
    if isinstance(signer, x402ClientSync):
        return x402HTTPClientSync(signer)
    client = register_exact_evm_client(x402ClientSync(), signer)
    client.set_spend_controls({"max_amount_per_payment": f"${amount_cents // 100}.{amount_cents % 100:02d}"})
    return x402HTTPClientSync(client)


def payment_headers(client: x402HTTPClientSync, unpaid: httpx.Response) -> dict[str, str]:
    """PAYMENT-SIGNATURE (X-PAYMENT for version 1 terms) paying the terms of this 402 answer."""
    headers, _ = client.handle_402_response(dict(unpaid.headers), unpaid.content, str(unpaid.request.url))
    return headers
