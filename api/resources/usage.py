"""/workspaces/{workspaceId}/billing/usage and usage-overview."""
import falcon

from api import idempotency, json_body, responses as r, schemas, views
from api.doc import doc
from domain.services.usage import UsageService

RECORD_NOTES = (
    "Each event debits the workspace's default account (bound when the request is accepted) once per "
    "(workspace, eventId): a resent batch, or one event in two batches, is debited once; later copies are "
    "reported as `duplicate` (the first stands, also when the copy differs). Overdraft policy: events are "
    "applied in batch order, each in full or not at all; an event the balance cannot cover in full is "
    "`refused` (reason `insufficient_funds`), never partly debited and never taking the balance below zero, "
    "and later events that still fit are debited. A refused event is not in the ledger, so sending it again "
    "after a top-up debits it. When the balance reaches 0 the workspace's tier becomes `restricted`. The "
    "whole batch is one transaction. The operation succeeds with result `{billingAccountId, workspaceId, "
    "debited, debitedCents, duplicates, refused, balanceAfterCents, events: [{eventId, status: "
    "debited|duplicate|refused, transactionId|null, reason?}]}`, one entry per event in request order. "
    "Bodies up to 512 KiB (not 64 KiB) are accepted here.")
OVERVIEW_NOTES = (
    "Usage recorded for this workspace (on whichever of its accounts it was debited), by the events' "
    "occurredAt, within [from, to): default the last 30 days. Only `from`: the 30 days from it; only `to`: "
    "the 30 days before it. A default window that would run past the calendar's ends is cut at them, not "
    "refused: it starts no earlier than 1970-01-01T00:00:00Z and ends no later than 9999-12-31T23:59:59.999Z; "
    "the answer's from and to show the window used. Periods are UTC days or hours; every period "
    "touching the window is listed, empty ones as zeros, the first and last possibly partial (periodStart "
    "is the period's boundary). hour spans at most 31 days, day at most 400 days (422 beyond). "
    "billingAccountId is the workspace's current default account.")


class Usage:
    max_body_bytes = schemas.USAGE_MAX_BODY_BYTES

    def __init__(self, usage: UsageService) -> None:
        self._usage = usage

    @doc("Record 1-1000 usage events; each debits the workspace's default account once (usage)",
         who="operator", status=202, body=schemas.RecordUsage, response=r.OperationShape,
         errors=(401, 403, 404, 409, 422), notes=RECORD_NOTES)
    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        json_body.raw_body(req, self.max_body_bytes)
        events = [event.domain() for event in schemas.load(schemas.RecordUsage, req).events]
        op = self._usage.request(req.context.caller, workspace_id, events, idempotency.scope(req))
        resp.status, resp.location = falcon.HTTP_202, f"/operations/{op.id}"
        resp.media = views.operation(op)


class UsageOverview:
    checks_key_itself = True  # api.auth: the overview's statement checks a user's key itself

    def __init__(self, usage: UsageService) -> None:
        self._usage = usage

    @doc("Usage totals, a time series with empty periods filled, and a per-metric breakdown", who="member",
         query=schemas.UsageOverviewQuery, response=r.UsageOverviewShape, errors=(401, 404, 422),
         notes=OVERVIEW_NOTES)
    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        q = schemas.query(schemas.UsageOverviewQuery, req)
        since, until = schemas.window(q)
        found = self._usage.overview(req.context.caller, workspace_id, since, until, q.granularity)
        resp.media = views.usage_overview(found)
