"""Grant terms: what a credit's grant is called, how it is spent and when it expires."""
from dataclasses import dataclass
from datetime import datetime

from domain.names import GrantCategory, GrantSource

DEFAULT_PRIORITY = 50


@dataclass(frozen=True)
class Terms:
    source: str
    category: str = GrantCategory.PROMOTIONAL
    priority: int = DEFAULT_PRIORITY  # lower is spent first
    expires_at: datetime | None = None


PAID = {GrantSource.STRIPE: Terms(GrantSource.STRIPE, GrantCategory.PAID),
        GrantSource.X402: Terms(GrantSource.X402, GrantCategory.PAID)}
