"""What the client raises: problem+json answers as typed errors, and failures to get an answer at all."""
import httpx

from billing_client.models import FieldError


class BillingError(Exception):
    """Anything the client raises."""


class ApiError(BillingError):
    """An error answer (RFC 9457 problem+json): status, title, detail and, for 422, the field errors."""

    def __init__(self, status: int, title: str, detail: str, *, type: str = "about:blank",
                 errors: list[FieldError] | None = None, headers: httpx.Headers | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.type = status, title, detail, type
        self.errors = errors or []
        self.headers = headers or httpx.Headers()

    @property
    def request_id(self) -> str | None:
        """The X-Request-Id the service logged this request under."""
        return self.headers.get("X-Request-Id")


class BadRequest(ApiError):
    """400: not JSON, or a header that does not parse."""


class Unauthorized(ApiError):
    """401: no key, or an unknown one."""


class Forbidden(ApiError):
    """403: a visible object this key may not change."""


class NotFound(ApiError):
    """404: nothing this key may see has this id."""


class Conflict(ApiError):
    """409: e.g. the Idempotency-Key was used for another request, or an email is taken."""


class InvalidInput(ApiError):
    """422: `errors` names each refused field."""


class RateLimited(ApiError):
    """429: past the API's own per-key limit, after the client's retries."""


class ServerError(ApiError):
    """5xx, after the client's retries."""


class PaymentRefused(ApiError):
    """402 to a paid x402 request: the service or its facilitator refused the payment (`detail` says why)."""


class ConnectionFailed(BillingError):
    """No answer at all (connection refused or reset, timed out), after the client's retries."""


class OperationTimeout(BillingError, TimeoutError):
    """The operation did not finish within the wait; `operation` is its last state seen."""

    def __init__(self, operation, timeout: float) -> None:
        super().__init__(f"operation {operation.id} still {operation.status} after {timeout} s")
        self.operation = operation


_BY_STATUS = {400: BadRequest, 401: Unauthorized, 402: PaymentRefused, 403: Forbidden, 404: NotFound,
              409: Conflict, 422: InvalidInput, 429: RateLimited}


def from_response(response: httpx.Response) -> ApiError:
    """The typed error of an error answer, problem+json or not (a proxy's page, the x402 402 body)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    title = body.get("title") or response.reason_phrase
    detail = body.get("detail") or body.get("error") or response.text[:500] or title
    errors = [FieldError.model_validate(e) for e in body.get("errors") or []]
    return cls(status, str(title), str(detail), type=body.get("type", "about:blank"), errors=errors,
               headers=response.headers)
