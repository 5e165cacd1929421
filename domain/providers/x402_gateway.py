"""x402 (USDC paid over HTTP 402) through the pinned SDK: the only module that imports x402."""
import base64
import binascii
import json
import logging
import re
import time
from dataclasses import dataclass

import httpx
from pydantic import ValidationError
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync
from x402.http.constants import DEFAULT_FACILITATOR_URL
from x402.http.facilitator_client_base import FacilitatorResponseError
from x402.http.utils import encode_payment_required_header, encode_payment_response_header
from x402.mechanisms.evm.constants import ERR_SETTLEMENT_PENDING
from x402.mechanisms.evm.eip712 import hash_domain
from x402.mechanisms.evm.types import TypedDataDomain
from x402.mechanisms.evm.utils import normalize_address
from x402.schemas import (PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, SettleResponse,
                          VerifyResponse)
from x402.schemas.helpers import parse_payment_payload
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from domain.errors import Malformed
from domain.providers.x402_types import FacilitatorUnavailable, Payment, PaymentRejected, Settlement, Verdict
from domain.money import cents_to_usdc_units

log = logging.getLogger(__name__)

SCHEME = "exact"
VALID_BEFORE_MARGIN_SECONDS = 6  # the SDK facilitator refuses validBefore < now + 6
_NONCE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_SIGNATURE = re.compile(r"^0x(?:[0-9a-fA-F]{2})+$")


@dataclass(frozen=True)
class NetworkDefaults:
    chain_id: int
    usdc: str
    eip712_name: str  # USDC's EIP-712 domain name differs per chain
    eip712_version: str
    v1_name: str  # the network's name in x402 version 1 payloads


NETWORKS = {
    "eip155:84532": NetworkDefaults(84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2",
                                    "base-sepolia"),
    "eip155:8453": NetworkDefaults(8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", "USD Coin", "2", "base"),
}


@dataclass(frozen=True)
class X402Config:
    pay_to: str
    network: str = "eip155:84532"
    facilitator_url: str = DEFAULT_FACILITATOR_URL
    asset: str | None = None  # None: the network's USDC
    eip712_name: str | None = None
    eip712_version: str | None = None
    max_timeout_seconds: int = 300
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class Terms:
    """What every payment must pay: the network, the token (with its EIP-712 domain) and the payee."""

    network: str
    chain_id: int
    asset: str
    eip712_name: str
    eip712_version: str
    pay_to: str
    max_timeout_seconds: int
    v1_name: str | None

    @property
    def domain_separator(self) -> str:
        domain = TypedDataDomain(name=self.eip712_name, version=self.eip712_version, chain_id=self.chain_id,
                                 verifying_contract=self.asset)
        return "0x" + hash_domain(domain).hex()


def terms(config: X402Config) -> Terms:
    """The configured terms: per-network defaults, each overridable; ValueError when incomplete."""
    known = NETWORKS.get(config.network)
    asset = config.asset or (known and known.usdc)
    name = config.eip712_name or (known and known.eip712_name)
    version = config.eip712_version or (known and known.eip712_version)
    if not (config.network.startswith("eip155:") and config.network[7:].isdigit()):
        raise ValueError(f"X402_NETWORK={config.network!r} is not an eip155:<chain id> network")
    if not (asset and name and version):
        raise ValueError(f"{config.network} has no defaults: set its asset and EIP-712 name and version")
    try:
        asset, pay_to = normalize_address(asset), normalize_address(config.pay_to)
    except ValueError:
        raise ValueError("the payee (X402_PAY_TO) and the asset (X402_ASSET) must be EVM addresses") from None
    return Terms(network=config.network, chain_id=int(config.network[7:]), asset=asset, eip712_name=name,
                 eip712_version=version, pay_to=pay_to, max_timeout_seconds=config.max_timeout_seconds,
                 v1_name=known and known.v1_name)


class _NotOk(Exception):
    """A facilitator answer other than 200, raised before the SDK (which only reads 200s) sees it."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"facilitator answered {status}: {body[:200]}")
        self.status, self.body = status, body

    def parsed(self, model):
        try:
            return model.model_validate(json.loads(self.body))
        except (ValueError, ValidationError):
            return None


def _only_200(response: httpx.Response) -> None:
    if response.status_code != 200:
        response.read()
        raise _NotOk(response.status_code, response.text)


def _no_answer(exc: Exception) -> str:
    """What went wrong, naming the facilitator only: an exception's text may carry its address, so the log
    keeps it whole and the reason (shown to callers as a checkout's failureReason) does not."""
    log.warning("the x402 facilitator failed: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, _NotOk):
        return f"the facilitator answered HTTP {exc.status}"
    if isinstance(exc, httpx.TimeoutException):
        return "the facilitator did not answer (timed out)"
    if isinstance(exc, httpx.TransportError):
        return "the facilitator did not answer (connection failed)"
    return "the facilitator's answer could not be read"


def _reason(code: str | None, message: str | None) -> str:
    code = code or "invalid_payload"
    return f"{code}: {message}" if message else code


class X402Gateway:
    def __init__(self, config: X402Config, http_client: httpx.Client | None = None) -> None:
        self.terms = terms(config)
        client = http_client or httpx.Client(timeout=config.timeout_seconds, event_hooks={"response": [_only_200]})
        self._facilitator = HTTPFacilitatorClientSync(FacilitatorConfig(
            url=config.facilitator_url, timeout=config.timeout_seconds, http_client=client))

    def requirements(self, amount_cents: int) -> PaymentRequirements:
        t = self.terms
        return PaymentRequirements(scheme=SCHEME, network=t.network, asset=t.asset,
                                   amount=str(cents_to_usdc_units(amount_cents)), pay_to=t.pay_to,
                                   max_timeout_seconds=t.max_timeout_seconds,
                                   extra={"name": t.eip712_name, "version": t.eip712_version})

    def payment_required(self, amount_cents: int, url: str, description: str, error: str) -> tuple[dict, str]:
        """The v2 PaymentRequired for this request: as JSON (the body) and base64 (PAYMENT-REQUIRED)."""
        required = PaymentRequired(x402_version=2, error=error, accepts=[self.requirements(amount_cents)],
                                   resource=ResourceInfo(url=url, description=description,
                                                         mime_type="application/json"))
        return required.model_dump(by_alias=True, exclude_none=True), encode_payment_required_header(required)

    def read_payment(self, header: str, amount_cents: int, url: str, description: str) -> Payment:
        """Decode a PAYMENT-SIGNATURE / X-PAYMENT value and match it to this request's requirements."""
        data = _decode(header)
        if data.get("x402Version") not in (1, 2):
            raise PaymentRejected("invalid_x402_version", "x402Version must be 1 or 2")
        try:
            payload = parse_payment_payload(data)
        except (ValidationError, ValueError) as exc:
            raise PaymentRejected("invalid_payload", str(exc).splitlines()[0]) from None
        wanted = self.requirements(amount_cents)
        if isinstance(payload, PaymentPayloadV1):
            requirements = self._match_v1(payload, wanted, url, description)
        else:
            _match_v2(payload.accepted, wanted)
            requirements = wanted.model_dump(by_alias=True, exclude_none=True)
        return _payment(payload, wanted, requirements)

    def _match_v1(self, payload: PaymentPayloadV1, wanted: PaymentRequirements, url: str,
                  description: str) -> dict:
        if payload.scheme != SCHEME:
            raise PaymentRejected("unsupported_scheme", f"only {SCHEME!r} is accepted")
        if self.terms.v1_name is None or payload.network != self.terms.v1_name:
            raise PaymentRejected("invalid_network", f"pay on {self.terms.v1_name or self.terms.network}")
        return PaymentRequirementsV1(
            scheme=SCHEME, network=self.terms.v1_name, max_amount_required=wanted.amount, resource=url,
            description=description, mime_type="application/json", pay_to=wanted.pay_to,
            max_timeout_seconds=wanted.max_timeout_seconds, asset=wanted.asset, extra=wanted.extra,
        ).model_dump(by_alias=True, exclude_none=True)

    def verify(self, payment: Payment) -> Verdict:
        """Ask the facilitator; a definite refusal is a Verdict, no usable answer FacilitatorUnavailable."""
        try:
            answer = self._facilitator.verify(*_models(payment))
        except _NotOk as exc:
            answer = exc.parsed(VerifyResponse)
            if answer is None or exc.status >= 500 or answer.is_valid:
                raise FacilitatorUnavailable(_no_answer(exc)) from None
        except (httpx.HTTPError, FacilitatorResponseError) as exc:
            raise FacilitatorUnavailable(_no_answer(exc)) from None
        if answer.is_valid:
            return Verdict(True)
        return Verdict(False, _reason(answer.invalid_reason, answer.invalid_message))

    def settle(self, payment: Payment) -> Settlement:
        """Ask the facilitator to settle. Timeouts, 5xx and settlement_pending are unknown, never failed."""
        try:
            answer = self._facilitator.settle(*_models(payment))
        except _NotOk as exc:
            answer = exc.parsed(SettleResponse)
            if answer is None or exc.status >= 500 or answer.success:
                pending = answer is not None and answer.error_reason == ERR_SETTLEMENT_PENDING
                return Settlement("unknown", ERR_SETTLEMENT_PENDING if pending else str(exc),
                                  answer.transaction if answer is not None and answer.transaction else None)
        except (httpx.HTTPError, FacilitatorResponseError) as exc:
            return Settlement("unknown", _no_answer(exc))
        if answer.success:
            return Settlement("settled", transaction=answer.transaction)
        outcome = "unknown" if answer.error_reason == ERR_SETTLEMENT_PENDING else "failed"
        return Settlement(outcome, _reason(answer.error_reason, answer.error_message), answer.transaction or None)

    @staticmethod
    def payment_response(payment: Payment, *, success: bool, transaction: str | None,
                         reason: str | None = None) -> str:
        """A base64 SettleResponse for PAYMENT-RESPONSE (X-PAYMENT-RESPONSE in version 1)."""
        code, _, message = (reason or "").partition(": ")
        return encode_payment_response_header(SettleResponse(
            success=success, error_reason=None if success else code, error_message=None if success else message or None,
            payer=payment.payer, transaction=transaction or "", network=payment.network))


def _decode(header: str) -> dict:
    try:
        data = json.loads(base64.b64decode(header.strip(), validate=True).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise Malformed("the payment header is not base64-encoded JSON") from None
    if not isinstance(data, dict):
        raise Malformed("the payment header's JSON is not an object")
    return data


def _same_address(a: str, b: str) -> bool:
    return isinstance(a, str) and a.lower() == b.lower()


def _match_v2(got: PaymentRequirements, wanted: PaymentRequirements) -> None:
    """`accepted` must be exactly what this request requires (addresses compared without case)."""
    checks = (
        ("unsupported_scheme", got.scheme == wanted.scheme, f"scheme must be {wanted.scheme!r}"),
        ("invalid_network", got.network == wanted.network, f"network must be {wanted.network}"),
        ("asset_mismatch", _same_address(got.asset, wanted.asset), f"asset must be {wanted.asset}"),
        ("invalid_exact_evm_payload_recipient_mismatch", _same_address(got.pay_to, wanted.pay_to),
         f"payTo must be {wanted.pay_to}"),
        ("invalid_exact_evm_payload_authorization_value_mismatch", got.amount == wanted.amount,
         f"amount must be {wanted.amount} atomic units"),
        ("max_timeout_mismatch", got.max_timeout_seconds == wanted.max_timeout_seconds,
         f"maxTimeoutSeconds must be {wanted.max_timeout_seconds}"),
        ("eip712_domain_mismatch", {k: (got.extra or {}).get(k) for k in ("name", "version")} == wanted.extra,
         f"extra must name the token's EIP-712 domain {wanted.extra}"),
    )
    for reason, ok, message in checks:
        if not ok:
            raise PaymentRejected(reason, message)


def _authorization(inner: dict) -> tuple[dict, str]:
    """The EIP-3009 authorization and signature, well formed (decimal strings, a bytes32 nonce, hex)."""
    if "authorization" not in inner:
        raise PaymentRejected("unsupported_asset_transfer_method", "only EIP-3009 authorizations are accepted")
    auth, signature = inner["authorization"], inner.get("signature")
    fields = ("from", "to", "value", "validAfter", "validBefore", "nonce")
    well_formed = (isinstance(auth, dict) and all(isinstance(auth.get(f), str) for f in fields)
                   and all(auth[f].isdigit() for f in ("value", "validAfter", "validBefore"))
                   and _NONCE.match(auth["nonce"]) and isinstance(signature, str) and _SIGNATURE.match(signature))
    if not well_formed:
        raise PaymentRejected("invalid_payload", "the EIP-3009 authorization or its signature is malformed")
    return auth, signature


def _payment(payload: PaymentPayload | PaymentPayloadV1, wanted: PaymentRequirements,
             requirements: dict) -> Payment:
    """The authorization must pay payTo exactly the amount, and still be valid for a while."""
    auth, signature = _authorization(payload.payload)
    if not _same_address(auth["to"], wanted.pay_to):
        raise PaymentRejected("invalid_exact_evm_payload_recipient_mismatch", f"pay to {wanted.pay_to}")
    if int(auth["value"]) != int(wanted.amount):
        raise PaymentRejected("invalid_exact_evm_payload_authorization_value_mismatch",
                              f"the authorization must be for exactly {wanted.amount} atomic units")
    if int(auth["validBefore"]) < time.time() + VALID_BEFORE_MARGIN_SECONDS:
        raise PaymentRejected("invalid_exact_evm_payload_authorization_valid_before", "the authorization expired")
    try:
        payer = normalize_address(auth["from"])
    except ValueError:
        raise PaymentRejected("invalid_payload", "authorization.from is not an address") from None
    return Payment(version=payload.x402_version, network=wanted.network, payer=payer,
                   nonce=auth["nonce"].lower(), amount_atomic=int(auth["value"]),
                   valid_before=int(auth["validBefore"]), signature=signature.lower(),
                   payload=payload.model_dump(by_alias=True, exclude_none=True), requirements=requirements)


def _models(payment: Payment) -> tuple:
    if payment.version == 1:
        return (PaymentPayloadV1.model_validate(payment.payload),
                PaymentRequirementsV1.model_validate(payment.requirements))
    return PaymentPayload.model_validate(payment.payload), PaymentRequirements.model_validate(payment.requirements)
