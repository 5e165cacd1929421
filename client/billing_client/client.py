"""BillingClient: the service's HTTP API as typed methods, with retries, idempotency keys and cursor pages."""
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel

from billing_client import errors
from billing_client._retries import Retries
from billing_client.models import (Balance, BillingAccount, BillingAccountDetail, BillingAccountList, Checkout,
                                   CheckoutList, CreatedUser, LinkedAccount, LinkedAccountList, Member, Operation,
                                   RateLimitDecision, RateLimitStatus, Summary, Transaction, TransactionPage,
                                   UsageEvent, UsageOverview, User, Workspace, WorkspaceList, X402Accepted)

M = TypeVar("M", bound=BaseModel)
Time = datetime | str | None
FINISHED = ("succeeded", "failed")


def _given(params: Mapping[str, Any]) -> dict[str, Any]:
    """The values given (None left out), times as RFC 3339."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in params.items() if v is not None}


def _wire(value: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """A request object as JSON: a model by its camelCase names, a mapping as given."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return dict(value)


def _parsed(response: httpx.Response, model: type[M]) -> M:
    if response.is_error:
        raise errors.from_response(response)
    return model.model_validate(response.json())


class BillingClient:
    """One API key's view of the service. Every POST carries an Idempotency-Key (a new uuid4 unless given),
    kept across the client's own retries: 429 and 5xx answers, a 409 saying the key's first request still
    runs, and lost connections are sent again after a backoff (Retry-After when the answer gives one), up
    to `max_retries` times; any other 4xx raises at once."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0, max_retries: int = 3,
                 max_retry_wait: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"})
        self._retries = Retries(max_retries=max_retries, max_wait=max_retry_wait)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
              headers: Mapping[str, str] | None = None, idempotency_key: str | None = None) -> httpx.Response:
        headers = dict(headers or {})
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        request = self._http.build_request(method, path, json=json, params=_given(params or {}), headers=headers)
        return self._retries.send(self._http, request)

    def _call(self, method: str, path: str, model: type[M], **kwargs) -> M:
        return _parsed(self._send(method, path, **kwargs), model)

    def _pages(self, path: str, page: type[TransactionPage | CheckoutList], params: dict) -> Iterator[Any]:
        cursor = None
        while True:
            found = self._call("GET", path, page, params=params | {"cursor": cursor})
            yield from found.data
            if found.next_cursor is None:
                return
            cursor = found.next_cursor

    # Users and workspaces

    def create_user(self, email: str, name: str | None = None) -> CreatedUser:
        """Operator only. The user's `api_key` is in this answer and nowhere else."""
        return self._call("POST", "/users", CreatedUser, json=_given({"email": email, "name": name}))

    def me(self) -> User:
        return self._call("GET", "/users/me", User)

    def create_workspace(self, name: str, billing_account_id: str | None = None) -> Workspace:
        body = _given({"name": name, "billingAccountId": billing_account_id})
        return self._call("POST", "/workspaces", Workspace, json=body)

    def workspaces(self) -> list[Workspace]:
        return self._call("GET", "/workspaces", WorkspaceList).data

    def workspace(self, workspace_id: str) -> Workspace:
        return self._call("GET", f"/workspaces/{workspace_id}", Workspace)

    def add_member(self, workspace_id: str, user_id: str, role: str = "member") -> Member:
        body = {"userId": user_id, "role": role}
        return self._call("POST", f"/workspaces/{workspace_id}/members", Member, json=body)

    # Billing accounts the caller owns

    def billing_accounts(self) -> list[BillingAccount]:
        return self._call("GET", "/billing-accounts", BillingAccountList).data

    def billing_account(self, account_id: str) -> BillingAccountDetail:
        return self._call("GET", f"/billing-accounts/{account_id}", BillingAccountDetail)

    def account_balance(self, account_id: str) -> Balance:
        return self._call("GET", f"/billing-accounts/{account_id}/balance", Balance)

    def account_summary(self, account_id: str, *, from_: Time = None, to: Time = None) -> Summary:
        params = {"from": from_, "to": to}
        return self._call("GET", f"/billing-accounts/{account_id}/summary", Summary, params=params)

    def account_transactions(self, account_id: str, *, limit: int | None = None, cursor: str | None = None,
                             kind: str | None = None, from_: Time = None, to: Time = None) -> TransactionPage:
        params = {"limit": limit, "cursor": cursor, "kind": kind, "from": from_, "to": to}
        return self._call("GET", f"/billing-accounts/{account_id}/transactions", TransactionPage, params=params)

    def iter_account_transactions(self, account_id: str, *, limit: int | None = None, kind: str | None = None,
                                  from_: Time = None, to: Time = None) -> Iterator[Transaction]:
        """Every transaction, newest first, page after page (`limit` per page)."""
        params = {"limit": limit, "kind": kind, "from": from_, "to": to}
        return self._pages(f"/billing-accounts/{account_id}/transactions", TransactionPage, params)

    # Workspace billing

    def linked_accounts(self, workspace_id: str) -> list[LinkedAccount]:
        return self._call("GET", f"/workspaces/{workspace_id}/billing/accounts", LinkedAccountList).data

    def create_linked_account(self, workspace_id: str, name: str) -> LinkedAccount:
        """A new billing account owned by the caller, linked to the workspace (not its default), balance 0."""
        path = f"/workspaces/{workspace_id}/billing/accounts"
        return self._call("POST", path, LinkedAccount, json={"name": name})

    def link_account(self, workspace_id: str, account_id: str) -> LinkedAccount:
        path = f"/workspaces/{workspace_id}/billing/accounts/link"
        return self._call("POST", path, LinkedAccount, json={"billingAccountId": account_id})

    def unlink_account(self, workspace_id: str, account_id: str) -> None:
        response = self._send("DELETE", f"/workspaces/{workspace_id}/billing/accounts/{account_id}")
        if response.is_error:
            raise errors.from_response(response)

    def set_default_account(self, workspace_id: str, account_id: str) -> Workspace:
        return self._call("POST", f"/workspaces/{workspace_id}/billing/accounts/{account_id}/default", Workspace)

    def balance(self, workspace_id: str) -> Balance:
        """The balance of the workspace's default billing account."""
        return self._call("GET", f"/workspaces/{workspace_id}/billing/balance", Balance)

    def transactions(self, workspace_id: str, *, limit: int | None = None, cursor: str | None = None,
                     kind: str | None = None, from_: Time = None, to: Time = None,
                     billing_account_id: str | None = None) -> TransactionPage:
        """One page; `billing_account_id` picks a linked account other than the default."""
        params = {"limit": limit, "cursor": cursor, "kind": kind, "from": from_, "to": to,
                  "billingAccountId": billing_account_id}
        return self._call("GET", f"/workspaces/{workspace_id}/billing/transactions", TransactionPage, params=params)

    def iter_transactions(self, workspace_id: str, *, limit: int | None = None, kind: str | None = None,
                          from_: Time = None, to: Time = None,
                          billing_account_id: str | None = None) -> Iterator[Transaction]:
        """Every transaction, newest first, following nextCursor (`limit` per page)."""
        params = {"limit": limit, "kind": kind, "from": from_, "to": to, "billingAccountId": billing_account_id}
        return self._pages(f"/workspaces/{workspace_id}/billing/transactions", TransactionPage, params)

    def summary(self, workspace_id: str, *, from_: Time = None, to: Time = None) -> Summary:
        params = {"from": from_, "to": to}
        return self._call("GET", f"/workspaces/{workspace_id}/billing/summary", Summary, params=params)

    def usage_overview(self, workspace_id: str, *, from_: Time = None, to: Time = None,
                       granularity: str | None = None) -> UsageOverview:
        params = {"from": from_, "to": to, "granularity": granularity}
        return self._call("GET", f"/workspaces/{workspace_id}/billing/usage-overview", UsageOverview, params=params)

    def add_credits(self, workspace_id: str, amount_cents: int, description: str = "", *,
                    idempotency_key: str | None = None) -> Operation:
        """Operator only: a queued credit_grant to the workspace's default account (see `wait`)."""
        body = {"amountCents": amount_cents, "description": description}
        return self._call("POST", f"/workspaces/{workspace_id}/billing/credits", Operation, json=body,
                          idempotency_key=idempotency_key)

    def record_usage(self, workspace_id: str, events: Iterable[UsageEvent | Mapping[str, Any]], *,
                     idempotency_key: str | None = None) -> Operation:
        """Operator only: a queued batch of 1-1000 usage events, each debited once per eventId."""
        body = {"events": [_wire(event) for event in events]}
        return self._call("POST", f"/workspaces/{workspace_id}/billing/usage", Operation, json=body,
                          idempotency_key=idempotency_key)

    # Rate limits

    def rate_limits(self, workspace_id: str) -> RateLimitStatus:
        return self._call("GET", f"/workspaces/{workspace_id}/rate-limits", RateLimitStatus)

    def refresh_rate_limits(self, workspace_id: str, *, idempotency_key: str | None = None) -> Operation:
        """A queued tier recompute; the finished operation's result is the new status."""
        return self._call("POST", f"/workspaces/{workspace_id}/rate-limits/refresh", Operation,
                          idempotency_key=idempotency_key)

    def check_rate_limit(self, workspace_id: str, cost: int = 1, *,
                         idempotency_key: str | None = None) -> RateLimitDecision:
        """Operator only: consumes `cost` requests of the workspace's tier (once, whatever the retries)."""
        return self._call("POST", f"/workspaces/{workspace_id}/rate-limits/check", RateLimitDecision,
                          json={"cost": cost}, idempotency_key=idempotency_key)

    # Checkouts

    def create_checkout(self, workspace_id: str, amount_cents: int, success_url: str, cancel_url: str, *,
                        idempotency_key: str | None = None) -> Checkout:
        """A Stripe Checkout Session: send the payer to the answer's `url`."""
        body = {"amountCents": amount_cents, "successUrl": success_url, "cancelUrl": cancel_url}
        return self._call("POST", f"/workspaces/{workspace_id}/billing/checkout", Checkout, json=body,
                          idempotency_key=idempotency_key)

    def checkout(self, workspace_id: str, checkout_id: str) -> Checkout:
        return self._call("GET", f"/workspaces/{workspace_id}/billing/checkouts/{checkout_id}", Checkout)

    def iter_checkouts(self, workspace_id: str, *, limit: int | None = None) -> Iterator[Checkout]:
        return self._pages(f"/workspaces/{workspace_id}/billing/checkouts", CheckoutList, {"limit": limit})

    def pay_x402(self, workspace_id: str, amount_cents: int, signer: Any, *,
                 idempotency_key: str | None = None) -> X402Accepted:
        """Top up over x402: the unpaid request's 402 terms are signed through the x402 SDK's client side,
        then the same request goes again with PAYMENT-SIGNATURE, under the same Idempotency-Key (a 402 is
        never stored under it). `signer` is an eth-account account or an x402 EVM signer, allowed to sign
        this amount and no more, or an x402ClientSync configured as you want. Needs the `x402` extra."""
        from billing_client import x402_payer  # the optional extra, imported only by who pays

        path, body = f"/workspaces/{workspace_id}/billing/checkout/x402", {"amountCents": amount_cents}
        key = idempotency_key or str(uuid.uuid4())
        unpaid = self._send("POST", path, json=body, idempotency_key=key)
        if unpaid.status_code != 402:
            return _parsed(unpaid, X402Accepted)
        headers = x402_payer.payment_headers(x402_payer.payer(signer, amount_cents), unpaid)
        return _parsed(self._send("POST", path, json=body, headers=headers, idempotency_key=key), X402Accepted)

    # Operations

    def operation(self, operation_id: str) -> Operation:
        return self._call("GET", f"/operations/{operation_id}", Operation)

    def wait(self, operation: Operation | X402Accepted | str, timeout: float = 60.0) -> Operation:
        """Poll until the operation succeeded or failed (a business refusal: see its `error`); raises
        OperationTimeout past `timeout` seconds. While it waits for a retry it shows attempts and lastError."""
        operation_id = operation if isinstance(operation, str) else operation.id
        deadline, pause = time.monotonic() + timeout, 0.05
        while True:
            current = self.operation(operation_id)
            left = deadline - time.monotonic()
            if current.status in FINISHED:
                return current
            if left <= 0:
                raise errors.OperationTimeout(current, timeout)
            time.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)
