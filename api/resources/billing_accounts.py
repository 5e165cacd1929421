"""/billing-accounts: the caller's own accounts."""
import falcon

from api import responses as r, schemas, views
from api.doc import doc
from domain.services.reads import ReadService


class Accounts:
    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("Billing accounts the caller owns", response=r.BillingAccountList, errors=(401, 403))
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"data": [views.account(a) for a in self._reads.owned_accounts(req.context.caller)]}


class Account:
    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("A billing account and the workspaces linked to it", response=r.BillingAccountDetailShape,
         errors=(401, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        account, workspace_ids = self._reads.account(req.context.caller, account_id)
        resp.media = views.account(account) | {"linkedWorkspaceIds": workspace_ids}


class AccountBalance:
    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("A billing account's balance, now or as of an instant", query=schemas.BalanceQuery,
         response=r.BalanceShape, errors=(401, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        as_of = schemas.query(schemas.BalanceQuery, req).as_of if req.query_string else None
        resp.media = views.balance(self._reads.balance(req.context.caller, account_id, as_of))


class AccountSummary:
    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("Totals of a billing account's transactions within [from, to); balanceCents is current",
         query=schemas.Window, response=r.SummaryShape, errors=(401, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        since, until = schemas.window(schemas.query(schemas.Window, req))
        resp.media = views.summary(self._reads.summary(req.context.caller, account_id, since, until))


class AccountTransactions:
    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("A billing account's transactions, newest first", query=schemas.TransactionsQuery,
         response=r.TransactionPage, errors=(401, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, account_id: str) -> None:
        q = schemas.query(schemas.TransactionsQuery, req)
        since, until = schemas.window(q)
        found = self._reads.transactions(req.context.caller, account_id, limit=q.limit, cursor=q.cursor,
                                         kind=q.kind, since=since, until=until)
        resp.media = views.page(found, views.transaction)
