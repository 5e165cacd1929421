"""x402 payments as the services see them: plain values and errors, without the x402 SDK (slow to import),
which only domain.providers.x402_gateway loads."""
from dataclasses import asdict, dataclass


class PaymentRejected(Exception):
    """The payload does not pay what this request requires, or the facilitator found it invalid."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


class FacilitatorUnavailable(Exception):
    """The facilitator gave no usable answer; nothing can be concluded from it."""


@dataclass(frozen=True)
class Payment:
    """A payload that matches this request's terms, with what it is keyed and stored by."""

    version: int
    network: str
    payer: str
    nonce: str
    amount_atomic: int
    valid_before: int
    signature: str
    payload: dict  # as the client sent it
    requirements: dict  # what the facilitator checks it against, in the payload's version

    def stored(self) -> dict:
        return asdict(self)

    @classmethod
    def from_stored(cls, details: dict) -> "Payment":
        return cls(**{name: details[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: str | None = None


@dataclass(frozen=True)
class Settlement:
    outcome: str  # settled | failed | unknown
    reason: str | None = None
    transaction: str | None = None

    @property
    def authorization_used(self) -> bool:
        """The chain says the nonce is spent: by an earlier attempt of ours, or by someone else."""
        text = (self.reason or "").lower()
        from x402.mechanisms.evm.constants import ERR_NONCE_ALREADY_USED

        return ERR_NONCE_ALREADY_USED in text or "authorization is used" in text
