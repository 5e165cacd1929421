"""/workspaces/{workspaceId}/billing: linked accounts, balance, transactions, summary, credits."""
import falcon

from api import idempotency, responses as r, schemas, views
from api.doc import doc
from domain.grants import Terms
from domain.names import GrantSource
from domain.services.operations import OperationService
from domain.services.reads import ReadService
from domain.services.workspaces import WorkspaceService

MANAGE_ERRORS = (401, 403, 404, 409, 422)


class LinkedAccounts:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self._workspaces = workspaces

    @doc("Billing accounts linked to the workspace", response=r.LinkedAccountList, errors=(401, 404))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        items = self._workspaces.linked_accounts(req.context.caller, workspace_id)
        resp.media = {"data": [views.linked_account(item) for item in items]}

    @doc("Create a billing account owned by the caller and link it (not default, balance 0)",
         who="owner, admin", status=201, body=schemas.CreateBillingAccount, response=r.LinkedAccountShape,
         errors=MANAGE_ERRORS)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.CreateBillingAccount, req)
        linked = self._workspaces.create_and_link(req.context.caller, workspace_id, body.name)
        resp.status, resp.media = falcon.HTTP_201, views.linked_account(linked)


class LinkAccount:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self._workspaces = workspaces

    @doc("Link a billing account the caller owns; 200 when it was linked already", who="owner, admin",
         status=201, body=schemas.LinkBillingAccount, response=r.LinkedAccountShape, errors=MANAGE_ERRORS)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.LinkBillingAccount, req)
        linked, created = self._workspaces.link(req.context.caller, workspace_id, body.billing_account_id)
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.media = views.linked_account(linked)


class DefaultAccount:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self._workspaces = workspaces

    @doc("Make a linked billing account the workspace default (409 when not linked)", who="owner, admin",
         response=r.WorkspaceShape, errors=MANAGE_ERRORS)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, account_id: str) -> None:
        resp.media = views.workspace(self._workspaces.set_default(req.context.caller, workspace_id, account_id))


class LinkedAccount:
    def __init__(self, workspaces: WorkspaceService) -> None:
        self._workspaces = workspaces

    @doc("Unlink a non-default billing account (409 for the default, 404 when not linked)",
         who="owner, admin", status=204, errors=MANAGE_ERRORS)
    def on_delete(self, req: falcon.Request, resp: falcon.Response, workspace_id: str, account_id: str) -> None:
        self._workspaces.unlink(req.context.caller, workspace_id, account_id)
        resp.status = falcon.HTTP_204


class Balance:
    checks_key_itself = True  # api.auth: the read checks a user's key in its own statement

    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("Balance of the workspace's default billing account, now or as of an instant", who="member",
         query=schemas.BalanceQuery, response=r.BalanceShape, errors=(401, 404, 422),
         notes="The default account is the one at the moment of the request, read as of the instant asked for.")
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        as_of = schemas.query(schemas.BalanceQuery, req).as_of if req.query_string else None
        resp.media = views.balance(self._reads.workspace_balance(req.context.caller, workspace_id, as_of),
                                   workspace_id)


class Transactions:
    checks_key_itself = True

    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("Transactions of the workspace's default billing account (billingAccountId picks another "
         "linked one), newest first", who="member", query=schemas.TransactionsQuery,
         response=r.TransactionPage, errors=(401, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        q = schemas.query(schemas.TransactionsQuery, req)
        since, until = schemas.window(q)
        found = self._reads.workspace_transactions(req.context.caller, workspace_id, q.billing_account_id,
                                                   limit=q.limit, cursor=q.cursor, kind=q.kind,
                                                   since=since, until=until)
        resp.media = views.page(found, views.transaction_row)


class Summary:
    def __init__(self, reads: ReadService) -> None:
        self._reads = reads

    @doc("Summary of the workspace's default billing account within [from, to)", who="member",
         query=schemas.Window, response=r.SummaryShape, errors=(401, 404, 422))
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        since, until = schemas.window(schemas.query(schemas.Window, req))
        found = self._reads.workspace_summary(req.context.caller, workspace_id, since, until)
        resp.media = views.summary(found, workspace_id)


class Credits:
    settles_idempotency = True  # the operation and its Idempotency-Key answer: one statement

    def __init__(self, operations: OperationService) -> None:
        self._operations = operations

    @doc("Queue a credit_grant to the workspace's default billing account", who="operator", status=202,
         body=schemas.AddCredits, response=r.OperationShape, errors=(401, 403, 404, 409, 422),
         notes="The account is the workspace default at the moment of the request. Poll Location. The credit "
               "opens a grant (source `operator`) with the category, priority and expiresAt given; an expiresAt "
               "that is not in the future is refused (422). A credit that lands on a negative balance pays that "
               "off first: its grant holds what is left above zero.")
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        body = schemas.load(schemas.AddCredits, req)
        terms = Terms(GrantSource.OPERATOR, body.category, body.priority, body.expires_at)
        outcome = self._operations.request_credit(req.context.caller, workspace_id, body.amount_cents,
                                                  body.description, claim=idempotency.claim(req), terms=terms)
        idempotency.respond(req, resp, outcome, self)

    @staticmethod
    def answer_for(op) -> tuple[int, dict, str]:
        return 202, views.operation(op), f"/operations/{op.id}"
