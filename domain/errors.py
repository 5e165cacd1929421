"""Domain errors; the API maps each to one HTTP status in one table."""


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(DomainError):
    """The thing does not exist, or the caller may not see it."""


class Unauthenticated(DomainError):
    """No live API key has the one the caller sent (401)."""


class Forbidden(DomainError):
    """The caller may see the thing but not do this to it."""


class Conflict(DomainError):
    """The request clashes with the current state."""


class InsufficientFunds(DomainError):
    """A debit would take a balance below zero."""


class NotAffordable(DomainError):
    """A reservation refused at once: what is available, or the spend limit, does not cover it (402). `problem`
    names the problem type: insufficient-funds or spend-limit."""

    def __init__(self, detail: str, problem: str) -> None:
        super().__init__(detail, problem=problem)
        self.problem = problem


class InvalidInput(DomainError):
    """A value the schema let through but the domain refuses."""

    def __init__(self, detail: str, field: str) -> None:
        super().__init__(detail, field=field)
        self.field = field


class Malformed(DomainError):
    """A request part that does not parse (a payment header that is not base64 JSON): 400."""


class Unavailable(DomainError):
    """A dependency (database, broker, provider) did not answer."""


class ProviderError(DomainError):
    """A payment provider refused or failed a request (502)."""


class NotConfigured(ProviderError):
    """A payment provider this deployment did not configure: `detail` names the setting (503 in the API, after
    its access checks; to the worker's tasks, a ProviderError like any other)."""


class InvalidSignature(DomainError):
    """A webhook's signature is missing, wrong or stale (400)."""


class InvalidEvent(DomainError):
    """A correctly signed webhook body that is not a well-formed event (400): never stored, never retried."""
