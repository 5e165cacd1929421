"""The OpenAPI 3.1 document, built from the routes and the schemas that validate requests."""
from api import docs_page, responses
from api.doc import EndpointDoc

PATH_PARAMS = {"workspace_id": "workspaceId", "account_id": "billingAccountId",
               "operation_id": "operationId", "checkout_id": "checkoutId", "hold_id": "holdId",
               "endpoint_id": "endpointId", "delivery_id": "deliveryId"}
METHODS = ("get", "post", "put", "patch", "delete")

CONVENTIONS = """\
Money is integer cents (`amountCents`, `balanceCents`), currency `usd`; a float (also a whole one such
as `1.0` or `1e2`), string, boolean, zero or negative amount, or one over 100,000,000 cents (so any
integer beyond 64 bits), is refused with 422. Errors are RFC 9457 `application/problem+json`; 422 adds
`errors: [{field, message}]`.

Bodies are one UTF-8 JSON object (`Content-Type: application/json`). Over 64 KiB (512 KiB for usage
batches): 413, also when Content-Length alone says so. 400, with the reason in `detail`: not JSON; not
UTF-8 (UTF-16 or UTF-32, a byte order mark, invalid bytes); nested deeper than 32 levels; `NaN`,
`Infinity` or `-Infinity`; a lone surrogate escape such as `\\ud800`; and an object with the same key
twice, whatever the values: `{"amountCents": 1, "amountCents": 100000}` is refused rather than read as
either amount. An integer of more than 40 digits is taken as over every field's limit (422 naming the
field). JSON that is not an object, unknown fields, and unknown query parameters (on operations
that take any): 422. An id that does not name something the caller may see answers 404, in the path or in
a body; ids are compared exactly, so look-alikes (Cyrillic letters, fullwidth digits, zero-width or bidi
characters, another case) name nothing.

Authentication: `Authorization: Bearer <key>`; a user's key comes back once from `POST /users`, the
operator key is `BILLING_OPERATOR_TOKEN`. Missing or unknown key: 401. An object the caller may not see
answers 404 exactly like one that does not exist; a visible object the caller may not change: 403. The
operator may read every workspace and billing account, and may not act as a user (list "my" workspaces
or accounts, create workspaces, link accounts).

Idempotency: every POST accepts `Idempotency-Key` (1-255 printable characters), scoped to the caller; the
`billing credit` command shares the operator's keys. A request's fingerprint is its method, path (with its
ids) and body (as JSON: key order and spacing do not matter). Within the replay window
(`BILLING_IDEMPOTENCY_TTL_SECONDS`, default 86400, counted from the key's first use) the same key and
fingerprint replay the first answer (same status, same body, header `Idempotent-Replayed: true`); the same
key with another fingerprint: 409. After the window the key is free: a request under it is processed as
new, and whatever was created under the old one no longer stands in its way. A request refused before the
endpoint ran (a bad key, a body refused with 400, 413 or 422) claims nothing, so it may be corrected and
sent again under the same key. A second request while the first still runs: 409 with `Retry-After: 1` (the
first usually ends within it, and the retry gets its answer); a claim whose process died is released after
`BILLING_IDEMPOTENCY_LEASE_SECONDS` (default 60) and the retry runs anew. Answers of 500 and above, and 402,
are never recorded: the retry runs anew, and finds what the first attempt created (the same operation, the
same checkout, and through Stripe's own idempotency key the same Checkout Session), so nothing is created twice.

Queued operations (`202` + Operation): `failed` only for a business refusal (insufficient balance, unknown
account, amount mismatch). A transient cause (the billing account locked by another transaction for longer
than `BILLING_DB_LOCK_TIMEOUT_MS`, a time limit, the database or broker down, a killed worker) puts it back
in the queue, retried with backoff (1 s doubling to 5 min) until it is applied; meanwhile the Operation
shows `attempts`, `lastError` and `nextAttemptAt`. An attempt never holds a worker for longer than that
lock timeout, so one locked account does not hold up the others.

Ids are opaque: a transaction id (`txn_` and 13 characters) tells nothing of how many entries exist or which
comes next, and a cursor carries no entry number. Pagination: `limit` 1-200 (default 50) and an opaque `cursor`; lists answer `{data, nextCursor}`, newest
first. Paging by cursor returns every entry exactly once, also while new entries are written (new ones
appear at the head, not between pages). Windows: `from` is inclusive, `to` exclusive, RFC 3339 with an
offset. Every date given, in a query or a body, must lie from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z
once converted to UTC (else 422 naming the field).

HTTP/1.1: request bodies may be sent with `Transfer-Encoding: chunked` and are read like any other (413 past
the limit); an empty chunked body is 400, and the body of a request whose chunk framing breaks ends where it
broke (the connection closes after the answer). An answer given without reading the whole request body (413,
401, 404, ...) carries `Connection: close` and the connection is then closed; otherwise it is kept alive (75
seconds idle by default, `BILLING_HTTP_KEEPALIVE_SECONDS`).

Workspace transaction and summary routes show every entry of the billing account, including entries
made through other workspaces bound to the same account, so that they add up to its balance.

Reads that may lag: with read replicas configured (`DATABASE_READ_URL`), transaction pages, summaries and
the usage overview may lag the primary by up to `BILLING_READ_MAX_LAG_MS` (default 1000 ms): an entry just
posted may show there a moment after the balance or its Operation shows it. A summary's `balanceCents` is
then the balance as of the same moment as its totals. Balances, operations and checkouts are always current.

The API's own rate limit: `BILLING_API_RATE_LIMIT` requests per minute per API key (default 1200, 0 turns
it off; the operator key is exempt and gets no RateLimit headers). Every other authenticated answer carries
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the oldest counted request
leaves the moving 60-second window); past the limit: 429 with `Retry-After`. If the limiter's Redis is
unreachable, `BILLING_RATE_LIMIT_FAILURE_MODE` decides: `open` (default) lets requests through, `closed`
answers 503 with `Retry-After`; either way it is logged and counted, never a 500. The same setting governs
`POST .../rate-limits/check` (`closed` answers `allowed: false`).

Grants, holds and spend limits: every credit is a grant, and debits (usage, captures, refunds, expiries) draw
from the account's active grants in a fixed order (lower `priority`, then the earliest `expiresAt`, none last,
then the oldest; a refund from its payment's grant first). A grant past its `expiresAt` stays active, and is
drawn first, until the beat job debits its rest as `expiry` (within a minute). While a balance is at least 0 it
is what the active grants hold; a debit allowed below zero (a refund, a capture a hold had covered) leaves
the grants at 0. Holds lower `availableCents`, which usage events and new holds see. Refusals of a hold are 402
problems whose `type` names the reason: `/problems/insufficient-funds` or `/problems/spend-limit` (relative
references, resolved against the service's address); every other problem is `about:blank`. Balances `asOf` an
instant: right after the last transaction created at or before it (the entries of one usage batch share an
instant), with the grants and holds as they stood then.

Outbound webhooks: an endpoint (owner or admin; the operator may read them, members may not) receives the
event types it lists. An event is recorded in the transaction of the change that causes it, for the
endpoints subscribed at that moment (a later endpoint does not get earlier events; a rolled-back change sends
none), and delivered at least once to each: `POST <url>` with `{id: "evt_...", type, createdAt, workspaceId,
data}` and the Standard Webhooks headers (`webhook-id` = `id`, the same on every attempt and for every endpoint;
`webhook-timestamp`; `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>` keyed by the base64
part of the endpoint's `whsec_` secret). Deliveries are not ordered. Any 2xx within 10 s succeeds; redirects
are not followed. `data` per type: `transaction.created` the Transaction (for every entry of the account, to
each workspace whose default account it is); `balance.low` `{billingAccountId, balanceCents,
previousBalanceCents, lowBalanceCents, transactionId}` when a debit takes the default account's balance from at
or above the workspace's `lowBalanceCents` to below it; `balance.depleted` the same without `lowBalanceCents`,
from above 0 to 0 or below (credits never cross downward, so rising back and falling again is a new crossing);
`checkout.completed` and `checkout.failed` the Checkout; `operation.failed` the Operation; `grant.expiring` the
Grant, once, 7 days before its `expiresAt` (within 5 minutes; a grant made with less left is announced at
once); `spend_limit.alert` `{workspaceId, percent, limitCents, spentCents, periodStart, crossedAt}` once per step
and month. Addresses: the URL's name is resolved and every address checked at creation and again at every
attempt, and the connection goes to a checked address: loopback, private, link-local, shared (100.64/10),
unspecified, multicast, documentation and reserved ranges, and IPv6 forms of such IPv4 addresses (mapped, NAT64,
6to4, Teredo) are refused, as is `http`, unless the service runs with `BILLING_WEBHOOKS_ALLOW_PRIVATE=1`. A
deleted endpoint's pending deliveries fail; so do a disabled one's.
"""


IDEMPOTENCY_KEY = ("1-255 printable characters (else 422). The endpoint's first answer below 500 (not 402) is "
                   "replayed within BILLING_IDEMPOTENCY_TTL_SECONDS (default 24 hours); the same key with another "
                   "method, path or body: 409; while the first request runs: 409 with Retry-After.")


def _param_name(name: str) -> str:
    return PATH_PARAMS.get(name, name)


def _path(template: str) -> str:
    for snake, camel in PATH_PARAMS.items():
        template = template.replace("{" + snake + "}", "{" + camel + "}")
    return template


def _schema(model, components: dict) -> dict:
    schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _query_parameters(model) -> list[dict]:
    schema = model.model_json_schema(by_alias=True)
    return [{"name": name, "in": "query", "required": False, "schema": prop,
             "description": prop.get("description", "")} for name, prop in schema["properties"].items()]


def _operation(d: EndpointDoc, method: str, path_params: list[str], public: bool, components: dict) -> dict:
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemShape"}}}
    op = {"summary": d.summary, "description": f"Who: {d.who}. {d.notes}".strip(), "x-who": d.who,
          "parameters": [{"name": _param_name(p), "in": "path", "required": True, "schema": {"type": "string"}}
                         for p in path_params]}
    errors = set(d.errors)
    if not public:  # every authenticated call may meet a bad key, the API's own rate limit, a lost dependency
        op["security"] = [{"bearer": []}]
        errors |= {401, 429, 503}
    if d.query is not None:
        op["parameters"] += _query_parameters(d.query)
    if d.body is not None:
        required = any(f.is_required() for f in d.body.model_fields.values())  # else an empty body means {}
        op["requestBody"] = {"required": required,
                             "content": {"application/json": {"schema": _schema(d.body, components)}}}
    if method == "post" and not public:  # the middleware reads the key, and the body with it, on every POST
        op["parameters"].append({"name": "Idempotency-Key", "in": "header", "required": False,
                                 "description": IDEMPOTENCY_KEY,
                                 "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
        errors |= {400, 409, 413, 422}
    if d.body is not None:
        errors |= {400, 413}
    ok: dict = {"description": "Success"}
    if d.response is not None:
        ok["content"] = {"application/json": {"schema": _schema(d.response, components)}}
    elif d.media_type is not None:
        ok["content"] = {d.media_type: {"schema": {"type": "object" if d.media_type.endswith("json") else "string"}}}
    op["responses"] = {str(d.status): ok}
    if d.status == 201 and d.summary.startswith("Link"):
        op["responses"]["200"] = ok | {"description": "Already linked"}
    for status, (description, model) in d.answers.items():
        op["responses"][str(status)] = {"description": description,
                                        "content": {"application/json": {"schema": _schema(model, components)}}}
    for status in sorted(errors):
        op["responses"][str(status)] = {"description": "Problem", "content": problem}
    return op


def build(routes: list[tuple[str, object]]) -> dict:
    components: dict = {}
    _schema(responses.ProblemShape, components)
    paths: dict = {}
    for template, resource in routes:
        params = [p.strip("{}") for p in template.split("/") if p.startswith("{")]
        for method in METHODS:
            responder = getattr(resource, f"on_{method}", None)
            d = getattr(responder, "endpoint_doc", None)
            if d is not None:
                public = getattr(resource, "public", False)
                paths.setdefault(_path(template), {})[method] = _operation(d, method, params, public, components)
    return {"openapi": "3.1.0",
            "info": {"title": "Billing service", "version": "0.1.0", "description": CONVENTIONS},
            "paths": paths,
            "components": {"schemas": components,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


def page(document: dict) -> str:
    """The readable page over the document (GET /docs)."""
    return docs_page.render(document)
