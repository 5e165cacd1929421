"""Sending one request until it gets a final answer: backoff on 429, 409-in-progress, 5xx and lost connections."""
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from billing_client.errors import ConnectionFailed


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retryable(response: httpx.Response) -> bool:
    """429, 5xx, and a 409 with Retry-After: the Idempotency-Key's first request is still running. Any
    other 4xx would answer the same again."""
    status = response.status_code
    return status == 429 or status >= 500 or (status == 409 and "Retry-After" in response.headers)


@dataclass(frozen=True)
class Retries:
    max_retries: int = 3
    max_wait: float = 60.0  # a Retry-After longer than this is not waited for: the error is raised
    base: float = 0.5
    cap: float = 8.0
    sleep: Callable[[float], None] = time.sleep

    def backoff(self, attempt: int) -> float:
        """Exponential, with jitter so that many clients refused at once do not come back at once."""
        return min(self.cap, self.base * 2 ** attempt) * random.uniform(0.5, 1.0)

    def delay(self, response: httpx.Response, attempt: int) -> float | None:
        """How long to wait before sending again, None to give this answer to the caller."""
        if attempt >= self.max_retries or not retryable(response):
            return None
        asked = retry_after(response)
        if asked is None:
            return self.backoff(attempt)
        return asked if asked <= self.max_wait else None

    def send(self, http: httpx.Client, request: httpx.Request) -> httpx.Response:
        """The first final answer to `request`. Each retry sends the very same request, so an
        Idempotency-Key it carries is kept and the service applies it once."""
        attempt = 0
        while True:
            try:
                response = http.send(request)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise ConnectionFailed(f"{request.method} {request.url}: {exc!r}") from exc
                wait = self.backoff(attempt)
            else:
                wait = self.delay(response, attempt)
                if wait is None:
                    return response
            self.sleep(wait)
            attempt += 1
