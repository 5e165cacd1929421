"""The floor apps of issue 14: for each hot path, the thinnest Falcon + psycopg (+ redis-py) app that runs the
statements and Redis calls the service runs for that request, checks the caller the same way, and answers the
same JSON. It is the honest limit for Python on this machine; bench/floors serves it beside the service.

    gunicorn 'bench.floor:balance_app()' ...            granian --interface wsgi --factory bench.floor:balance_app
    bench.floor:transactions_app / bench.floor:ratelimit_app likewise

What each app does per request (the service runs the same prepared statements, domain/store/prepared.py, on a
pooled psycopg connection in autocommit, plus its request log line, metrics, X-Request-Id and middleware):

* balance (GET /workspaces/{id}/billing/balance, a user's key): the API key's own limit (domain/store/limiter.py's
  script, `billing-rl:api:<sha256 of the key>`), then one statement: the live key, the workspace, the caller's
  role and the default account (prepared.WORKSPACE_FOR_KEY). No live key: 401 (also before a 429).
* transactions (GET .../billing/transactions?limit=50[&cursor=...]): the same two, then the keyset page
  (prepared.page_statement, limit + 1 rows); ids and the cursor as the service shows them (domain.public_ids'
  keyed permutation, its key read once from the database).
* hold create (POST /workspaces/{id}/billing/holds, the operator key; bench/holds): the body checked
  (amountCents, expiresInSeconds, description), then the service's one statement (domain/store/holds.py
  RESERVE, a workspace without a spend limit): 201 with the hold, or 402 (the floor does not say why).
* rate-limit check (POST /workspaces/{id}/rate-limits/check, the operator key): the workspace's default
  account and its stored tier in one statement (prepared.TIER_OF_WORKSPACE), the tier computed and stored when
  there is none, then the limiter's script on `billing-rl:account:<account>` (domain/services/rate_limits.py).
  A user's key costs the key lookup and the workspace + role statement, then 403 (member) or 404.

Authorization as the service: no or a wrong key 401, a workspace the caller is not a member of (or that does
not exist) 404. Configuration from the service's own environment (worker.settings: DATABASE_URL, REDIS_URL,
BILLING_OPERATOR_TOKEN, BILLING_API_RATE_LIMIT, BILLING_TIERS, BILLING_RATE_LIMIT_FAILURE_MODE), read once.
psycopg_pool connections in autocommit, every statement prepared; orjson; no logging, no metrics.
BENCH_FLOOR_POOL sets the connections per process (default 4: one per server thread).
"""
import hashlib
import hmac
import math
import os
import time
from datetime import UTC, datetime

import falcon
import orjson
import redis
from psycopg_pool import ConnectionPool

# --- the service's statements, the very strings it prepares (domain/store/prepared.py)

from domain.ids import new_id
from domain.store.holds import RESERVE
from domain.store.prepared import (BALANCE_FOR_KEY, BALANCE_FOR_USER, TIER_OF_WORKSPACE, WORKSPACE_FOR_KEY,
                                   WORKSPACE_FOR_USER, page_statement)

# Only where the API key's limit refuses a request whose key the read has not checked yet (not measured)
KEY_LOOKUP = "SELECT user_id FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL"
PAGE_FIRST = page_statement()
PAGE_BEFORE = page_statement(before_id=True)

WORKSPACE_ROLE = """
SELECT w.id, w.name, w.owner_user_id, w.default_billing_account_id, w.created_at, m.role
FROM workspaces w LEFT JOIN workspace_members m ON m.workspace_id = w.id AND m.user_id = %(user_id)s
WHERE w.id = %(workspace_id)s """

# Only for an account without a stored tier (never on the measured path: bench/floors stores every tier first)
TIER_INPUTS = """
SELECT a.balance_cents,
       COALESCE((SELECT SUM(e.amount_cents) FROM ledger_entries e WHERE e.billing_account_id = a.id
                 AND e.kind IN ('stripe_topup', 'x402_topup', 'refund')), 0) AS paid_cents,
       COALESCE((SELECT MAX(e.id) FROM ledger_entries e WHERE e.billing_account_id = a.id), 0) AS last_entry_id
FROM billing_accounts a WHERE a.id = %s
"""
TIER_SAVE = """
INSERT INTO account_tiers (billing_account_id, tier, reason, paid_cents, balance_cents, as_of_entry_id, computed_at)
VALUES (%s, %s, %s, %s, %s, %s, now())
ON CONFLICT (billing_account_id) DO UPDATE SET tier = excluded.tier, reason = excluded.reason,
    paid_cents = excluded.paid_cents, balance_cents = excluded.balance_cents,
    as_of_entry_id = excluded.as_of_entry_id, computed_at = excluded.computed_at
WHERE account_tiers.as_of_entry_id <= excluded.as_of_entry_id
RETURNING tier
"""
STORED_TIER = "SELECT tier FROM account_tiers WHERE billing_account_id = %s"

WINDOW_SECONDS = 60
MAX_BODY_BYTES = 64 * 1024
HEX = frozenset("0123456789abcdef")


# --- answers

def _json(resp: falcon.Response, body, status: int = 200) -> None:
    resp.status = status
    resp.content_type = "application/json"
    resp.data = orjson.dumps(body)


def _problem(resp: falcon.Response, status: int, title: str, detail: str, headers: dict | None = None) -> None:
    resp.status = status
    resp.content_type = "application/problem+json"
    resp.data = orjson.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    if headers:
        resp.set_headers(headers)


def _ts(value) -> str | None:
    """The contract's instant: UTC, milliseconds (truncated), Z."""
    return None if value is None else value.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


REFUSED = object()


def _body(req: falcon.Request, resp: falcon.Response):
    """The request's JSON body ({} when it is empty), or REFUSED with the 413 or 400 written."""
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        _problem(resp, 413, "Content Too Large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        return REFUSED
    raw = req.bounded_stream.read() if length else b""
    try:
        return orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        _problem(resp, 400, "Bad Request", "the body is not valid JSON")
        return REFUSED


def _unauthorized(resp: falcon.Response, detail: str) -> None:
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        resp.delete_header(name)
    _problem(resp, 401, "Unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="billing"'})


def _looks_like(prefix: str, value: str) -> bool:
    head, _, tail = value.partition("_")
    return head == prefix and len(tail) == 32 and HEX.issuperset(tail)


def _public_ids(pool: ConnectionPool):
    """The service's transaction ids and cursors: domain.public_ids' keyed permutation on the database's
    `public_ids` key, read once."""
    from domain.public_ids import PublicIds

    with pool.connection() as conn:
        key = bytes(conn.execute("SELECT key FROM service_keys WHERE name = 'public_ids'").fetchone()[0])
    return PublicIds(lambda: key)


OPERATOR = object()


class Floor:
    """What the three apps share: the pool, Redis, the limiter's script, the configuration."""

    def __init__(self) -> None:
        from domain.store.limiter import DECIDE
        from worker import settings as settings_module

        s = settings_module.load()
        self.operator_token = settings_module.require(s.operator_token, "BILLING_OPERATOR_TOKEN").encode()
        self.api_rate_limit = s.api_rate_limit
        self.tiers, self.fail_open = s.tiers, s.rate_limit_fail_open
        size = int(os.environ.get("BENCH_FLOOR_POOL", "4"))
        self.pool = ConnectionPool(settings_module.require(s.database_url, "DATABASE_URL"), min_size=size,
                                   max_size=size, kwargs={"autocommit": True}, open=True, name="floor")
        self.pool.wait(timeout=30)
        self.redis = redis.Redis(connection_pool=redis.ConnectionPool.from_url(
            settings_module.require(s.redis_url, "REDIS_URL"), socket_connect_timeout=0.25, socket_timeout=0.5))
        self.script = DECIDE
        self.ids = _public_ids(self.pool)
        self.sha = hashlib.sha1(DECIDE.encode()).hexdigest()

    # the caller: OPERATOR, the SHA-256 of a user's key (its read checks it), or None (the answer is written)
    def caller(self, req: falcon.Request, resp: falcon.Response, conn):
        scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            _unauthorized(resp, "send Authorization: Bearer <key>")
            return None
        if hmac.compare_digest(token.encode(), self.operator_token):
            return OPERATOR
        if len(token) > 200:
            _unauthorized(resp, "the key is unknown or revoked")
            return None
        digest = hashlib.sha256(token.encode()).digest()
        if self.api_rate_limit > 0 and not self.api_limit(resp, digest.hex()):
            if conn.execute(KEY_LOOKUP, (digest,), prepare=True).fetchone() is None:
                _unauthorized(resp, "the key is unknown or revoked")
            return None
        return digest

    def api_limit(self, resp: falcon.Response, key_hex: str) -> bool:
        """The API key's own limit (RateLimit-* headers); False when the 429 or 503 is written."""
        limit = self.api_rate_limit
        decision = self.decide(f"billing-rl:api:{key_hex}", limit, 1)
        if decision is None:
            if self.fail_open:
                decision = (True, limit, limit, 0)
            else:
                _problem(resp, 503, "Service Unavailable", "the rate limiter is unavailable; retry shortly",
                         {"Retry-After": "1"})
                return False
        allowed, limit, remaining, reset = decision
        headers = {"RateLimit-Limit": str(limit), "RateLimit-Remaining": str(remaining),
                   "RateLimit-Reset": str(reset)}
        if not allowed:
            _problem(resp, 429, "Too Many Requests", f"more than {limit} requests per minute with this API key",
                     headers | {"Retry-After": str(max(1, reset))})
            return False
        resp.set_headers(headers)
        return True

    def decide(self, key: str, per_minute: int, cost: int) -> tuple[bool, int, int, int] | None:
        """The limiter's script, one round trip: (allowed, limit, remaining, reset seconds); None: Redis down."""
        now = time.time()
        args = (repr(now), per_minute, WINDOW_SECONDS, cost)
        try:
            try:
                allowed, used, oldest = self.redis.evalsha(self.sha, 1, key, *args)
            except redis.exceptions.NoScriptError:
                allowed, used, oldest = self.redis.eval(self.script, 1, key, *args)
        except redis.RedisError:
            return None
        reset = max(0, math.ceil(float(oldest) + WINDOW_SECONDS - now)) if used else 0
        return bool(allowed), per_minute, max(0, per_minute - used), reset

    def workspace_account(self, resp: falcon.Response, conn, caller, workspace_id: str, balance: bool = False):
        """(user, workspace, role, account id, name, owner, is default, currency, balance, created[, held, paid,
        promotional, next expiry at, next expiry cents]), or None with the 401 or 404 written: a user's key is
        checked in the same statement."""
        params = {"workspace_id": workspace_id if _looks_like("ws", workspace_id) else "", "account_id": None}
        if caller is OPERATOR:
            row = conn.execute(BALANCE_FOR_USER if balance else WORKSPACE_FOR_USER, params | {"user_id": None},
                               prepare=True).fetchone()
        else:
            row = conn.execute(BALANCE_FOR_KEY if balance else WORKSPACE_FOR_KEY, params | {"key_hash": caller},
                               prepare=True).fetchone()
            if row is None:
                _unauthorized(resp, "the key is unknown or revoked")
                return None
        if row is None or row[1] is None or (caller is not OPERATOR and row[2] is None):
            _problem(resp, 404, "Not Found", "workspace not found")
            return None
        if row[3] is None:
            _problem(resp, 404, "Not Found", "billing account not linked to this workspace")
            return None
        return row


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _json(resp, {"status": "ok"})


class Balance:
    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        floor = self.floor
        with floor.pool.connection() as conn:
            caller = floor.caller(req, resp, conn)
            if caller is None:
                return
            row = floor.workspace_account(resp, conn, caller, workspace_id, balance=True)
            if row is None:
                return
        held, paid, promotional, expiry_at, expiry_cents = row[10:15]
        _json(resp, {"billingAccountId": row[3], "balanceCents": row[8], "availableCents": row[8] - held,
                     "paidCents": int(paid), "promotionalCents": int(promotional),  # SUMs: numeric
                     "nextExpiry": {"amountCents": int(expiry_cents), "expiresAt": _ts(expiry_at)} if expiry_at
                     else None,
                     "currency": row[7], "asOf": _ts_now(), "workspaceId": workspace_id})


def _ts_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Transactions:
    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def on_get(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        floor, params = self.floor, req.params
        limit, cursor = params.get("limit", "50"), params.get("cursor")
        if (set(params) - {"limit", "cursor"} or not isinstance(limit, str) or not limit.isdigit()
                or not 1 <= int(limit) <= 200
                or not (cursor is None or isinstance(cursor, str) and len(cursor) <= 200)):
            _problem(resp, 422, "Unprocessable Content", "the floor takes limit (1-200) and cursor only")
            return
        limit = int(limit)
        with floor.pool.connection() as conn:
            caller = floor.caller(req, resp, conn)
            if caller is None:
                return
            row = floor.workspace_account(resp, conn, caller, workspace_id)
            if row is None:
                return
            if cursor is None:
                rows = conn.execute(PAGE_FIRST, {"account_id": row[3], "limit": limit + 1}, prepare=True).fetchall()
            else:
                before = floor.ids.entry_of_cursor(cursor)
                if before is None:
                    _problem(resp, 422, "Unprocessable Content", "the cursor is not one this service issued")
                    return
                rows = conn.execute(PAGE_BEFORE, {"account_id": row[3], "before_id": before, "limit": limit + 1},
                                    prepare=True).fetchall()
        more, ids = len(rows) > limit, floor.ids
        rows = rows[:limit]
        _json(resp, {"data": [{"id": ids.transaction(e[0]), "billingAccountId": e[1], "workspaceId": e[2],
                               "kind": e[3], "amountCents": e[4], "balanceAfterCents": e[5], "description": e[6],
                               "reference": e[7], "createdAt": _ts(e[8])} for e in rows],
                     "nextCursor": ids.cursor(rows[-1][0]) if more else None})


class RateLimitCheck:
    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        floor = self.floor
        body = _body(req, resp)
        if body is REFUSED:
            return
        cost = body.get("cost", 1) if isinstance(body, dict) else None
        if type(cost) is not int or not 1 <= cost <= 100_000 or set(body) - {"cost"}:
            _problem(resp, 422, "Unprocessable Content", "the request has invalid values")
            return
        with floor.pool.connection() as conn:
            caller = floor.caller(req, resp, conn)
            if caller is None:
                return
            if caller is not OPERATOR:  # a user: 403 where they may see the workspace, 404 where not
                user = conn.execute(KEY_LOOKUP, (caller,), prepare=True).fetchone()
                if user is None:
                    _unauthorized(resp, "the key is unknown or revoked")
                    return
                found = conn.execute(WORKSPACE_ROLE, {"user_id": user[0], "workspace_id": workspace_id},
                                     prepare=True).fetchone() if _looks_like("ws", workspace_id) else None
                if found is None or found[5] is None:
                    _problem(resp, 404, "Not Found", "workspace not found")
                else:
                    _problem(resp, 403, "Forbidden", "only the operator checks rate limits")
                return
            found = conn.execute(TIER_OF_WORKSPACE, (workspace_id,), prepare=True).fetchone() \
                if _looks_like("ws", workspace_id) else None
            if found is None:
                _problem(resp, 404, "Not Found", "workspace not found")
                return
            account_id, tier = found
            if tier is None:
                tier = _compute_tier(conn, account_id, floor.tiers)
        rpm = floor.tiers.requests_per_minute(tier)
        decision = floor.decide(f"billing-rl:account:{account_id}", rpm, cost)
        if decision is None:
            decision = (floor.fail_open, rpm, rpm if floor.fail_open else 0, 0 if floor.fail_open else 1)
        allowed, limit, remaining, reset = decision
        _json(resp, {"allowed": allowed, "limit": limit, "remaining": remaining, "resetSeconds": reset, "tier": tier})


class HoldCreate:
    def __init__(self, floor: Floor) -> None:
        self.floor = floor

    def on_post(self, req: falcon.Request, resp: falcon.Response, workspace_id: str) -> None:
        floor = self.floor
        body = _body(req, resp)
        if body is REFUSED:
            return
        fields = body if isinstance(body, dict) else {}
        amount, seconds = fields.get("amountCents"), fields.get("expiresInSeconds", 3600)
        description = fields.get("description", "")
        if (type(amount) is not int or not 1 <= amount <= 100_000_000 or type(seconds) is not int
                or not 60 <= seconds <= 604_800 or not isinstance(description, str) or len(description) > 500
                or set(fields) - {"amountCents", "expiresInSeconds", "description"}):
            _problem(resp, 422, "Unprocessable Content", "the request has invalid values")
            return
        with floor.pool.connection() as conn:
            caller = floor.caller(req, resp, conn)
            if caller is None:
                return
            if caller is not OPERATOR:
                _problem(resp, 403, "Forbidden", "only the operator places holds")
                return
            if not _looks_like("ws", workspace_id):
                _problem(resp, 404, "Not Found", "workspace not found")
                return
            row = conn.execute(RESERVE, {
                "id": new_id("hold"), "workspace_id": workspace_id, "amount": amount, "seconds": seconds,
                "description": description, "reference": None, "created_by": "operator", "scope": None},
                prepare=True).fetchone()
        if row is None:
            _problem(resp, 402, "Payment Required", "the hold was refused")
            return
        account, hold_id, workspace, amount, captured, status, description, reference, expires, created, settled, \
            capture_op = row
        _json(resp, {"id": hold_id, "workspaceId": workspace, "billingAccountId": account, "amountCents": amount,
                     "capturedCents": captured, "status": status, "description": description,
                     "expiresAt": _ts(expires), "reference": reference, "createdAt": _ts(created),
                     "settledAt": _ts(settled), "captureOperationId": capture_op}, 201)


def _compute_tier(conn, account_id: str, table) -> str:
    """The tier of an account that has none stored yet, computed and stored as domain.services.rate_limits does."""
    from domain import tiers

    with conn.transaction():
        balance, paid, last = conn.execute(TIER_INPUTS, (account_id,)).fetchone()
        decision = tiers.decide(int(balance), int(paid), table)
        row = conn.execute(TIER_SAVE, (account_id, decision.tier, decision.reason, int(paid), int(balance),
                                       int(last))).fetchone()
        return row[0] if row else conn.execute(STORED_TIER, (account_id,)).fetchone()[0]


# --- the app factories (one per hot path; /health for the runner)

WS = "/workspaces/{workspace_id}"


def _app(path: str, resource) -> falcon.App:
    app = falcon.App()
    app.add_route("/health", Health())
    app.add_route(path, resource)
    return app


def balance_app() -> falcon.App:
    return _app(WS + "/billing/balance", Balance(Floor()))


def transactions_app() -> falcon.App:
    return _app(WS + "/billing/transactions", Transactions(Floor()))


def ratelimit_app() -> falcon.App:
    return _app(WS + "/rate-limits/check", RateLimitCheck(Floor()))


def holds_app() -> falcon.App:
    """bench/holds' floor: the balance read and the hold creation, one pool."""
    floor = Floor()
    app = _app(WS + "/billing/balance", Balance(floor))
    app.add_route(WS + "/billing/holds", HoldCreate(floor))
    return app


FACTORIES = {"balance": "balance_app", "transactions": "transactions_app", "ratelimit": "ratelimit_app"}
# The statements of each path's measured request, in order (bench/floors compares them with the service's)
STATEMENTS = {"balance": [BALANCE_FOR_KEY], "transactions": [WORKSPACE_FOR_KEY, PAGE_FIRST],
              "ratelimit": [TIER_OF_WORKSPACE]}
