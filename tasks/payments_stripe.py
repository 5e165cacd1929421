"""The payments queue: stripe top-ups."""
