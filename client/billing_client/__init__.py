"""Python client of the billing service's HTTP API."""
from billing_client.client import BillingClient
from billing_client.errors import (ApiError, BadRequest, BillingError, Conflict, ConnectionFailed, Forbidden,
                                   InvalidInput, NotFound, OperationTimeout, PaymentRefused, RateLimited,
                                   ServerError, Unauthorized)

__all__ = ["ApiError", "BadRequest", "BillingClient", "BillingError", "Conflict", "ConnectionFailed", "Forbidden",
           "InvalidInput", "NotFound", "OperationTimeout", "PaymentRefused", "RateLimited", "ServerError",
           "Unauthorized"]
