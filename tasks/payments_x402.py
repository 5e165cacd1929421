"""The payments queue: x402 top-ups."""
