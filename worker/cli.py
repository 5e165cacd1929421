"""The `billing` command: run the API, the worker, beat, or all of them at once; operator tools."""
import argparse
import json
import os
import secrets
import sys
import time
from datetime import timedelta
from pathlib import Path

from domain.errors import DomainError
from domain.models import OPERATOR_CALLER
from domain.money import MAX_MOVEMENT_CENTS
from domain.names import FINISHED, GRANT_STATUSES, HOLD_STATUSES, OperationStatus
from worker import settings as settings_module, standalone
from worker.processes import ALL_QUEUES, api_argv, beat_argv, flower_argv, migrate, worker_argv


def _cmd_migrate(args, s) -> int:
    migrate(settings_module.require(s.database_url, "DATABASE_URL"))
    print("migrations applied")
    return 0


def _cmd_api(args, s) -> int:
    settings_module.require(s.database_url, "DATABASE_URL")
    settings_module.require(s.operator_token, "BILLING_OPERATOR_TOKEN")
    argv = api_argv(args.port or s.port, args.workers, args.threads, s.http_keepalive_seconds, host=args.host)
    os.execv(argv[0], argv)


def _cmd_worker(args, s) -> int:
    settings_module.require(s.database_url, "DATABASE_URL")
    settings_module.require(s.broker_url, "REDIS_URL")
    argv = worker_argv(args.queues, args.concurrency, args.hostname)
    os.execv(argv[0], argv)


def _cmd_beat(args, s) -> int:
    settings_module.require(s.broker_url, "REDIS_URL")
    argv = beat_argv(args.state_dir)
    os.execv(argv[0], argv)


def _cmd_flower(args, s) -> int:
    settings_module.require(s.broker_url, "REDIS_URL")
    if not os.environ.get("FLOWER_BASIC_AUTH"):
        print("billing flower: FLOWER_BASIC_AUTH (user:password) is not set: the pages are open to anyone "
              "who reaches the port and the HTTP API answers 401", file=sys.stderr)
    argv = flower_argv(args.port, args.address, args.state_dir)
    os.execv(argv[0], argv)


def _cmd_standalone(args, s) -> int:
    return standalone.run(s, port=args.port or s.port, data_dir=Path(args.data_dir), host=args.host)


def _services():
    """This process's services, built on first use."""
    from worker.container import services  # lazy: the commands that exec a server or migrate never load the wiring

    return services()


def _cmd_create_user(args, s) -> int:
    user, api_key = _services().users.create(OPERATOR_CALLER, args.email, args.name)
    print(json.dumps({"id": user.id, "email": user.email, "defaultBillingAccountId":
                      user.default_billing_account_id, "apiKey": api_key}))
    return 0


def _cmd_audit(args, s) -> int:
    """Print notices, then broken invariants; exit 1 only on a broken invariant. A notice (Stripe refunded more
    than a checkout credited) is money lost at Stripe, not a ledger fault, and it stays listed for good: were
    it a failure, every later audit would fail and hide the next real break."""
    audit = _services().audit
    problems = audit.problems(stuck_after=timedelta(seconds=args.stuck_after))
    for line in [*audit.notices(), *problems]:
        print(line)
    print("audit: ok" if not problems else f"audit: {len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_relay(args, s) -> int:
    print(f"relayed {_services().relay.send_due()} operation(s)")
    found = _services().auto_top_ups.relay(reconcile_after=timedelta(seconds=s.stripe_reconcile_after_seconds))
    print(f"relayed {found['sent']} auto top-up(s) and {found['cards']} card save(s); "
          f"{found['reconciled']} auto top-up(s) settled by asking Stripe")
    return 0


def _cmd_reconcile(args, s) -> int:
    age = None if args.older_than is None else timedelta(seconds=args.older_than)
    if args.provider in ("stripe", "all") and _services().ctx.stripe is None:
        if args.provider == "stripe":
            settings_module.require(None, "STRIPE_API_KEY")
        print("stripe: skipped, not configured (STRIPE_API_KEY)")
    elif args.provider in ("stripe", "all"):
        after = timedelta(seconds=s.stripe_reconcile_after_seconds) if age is None else age
        print(f"stripe: reconciled {_services().stripe.reconcile(after=after)} pending checkout(s)")
    if args.provider in ("x402", "all"):
        found = _services().x402.reconcile() if age is None else _services().x402.reconcile(older_than=age)
        print(f"x402: reconciled {found} pending payment(s)")
    return 0


def _operation_json(op) -> str:
    """The operation as GET /operations/{id} shows it."""
    from api import views  # lazy: the API package (and the services it imports) only where it is used

    return json.dumps(views.operation(op))


def _answer(op, args) -> int:
    """Print the operation; with --wait, once it has finished (exit 1 if it failed or is still pending)."""
    deadline = time.monotonic() + args.timeout
    while args.wait and op.status not in FINISHED and time.monotonic() < deadline:
        time.sleep(0.2)
        op = _services().operations.get(OPERATOR_CALLER, op.id)
    print(_operation_json(op))
    if args.wait and op.status == OperationStatus.FAILED:
        print(f"billing: operation {op.id} failed", file=sys.stderr)
    elif args.wait and op.status != OperationStatus.SUCCEEDED:
        print(f"billing: operation {op.id} is still {op.status} after {args.timeout} s: is a worker running? "
              "(it is applied once one is)", file=sys.stderr)
    return 1 if args.wait and op.status != OperationStatus.SUCCEEDED else 0


def _cmd_credit(args, s) -> int:
    """The very request `POST .../billing/credits` is, sent to the API's app in this process: the same
    validation, access checks and Idempotency-Key flow (a key used over HTTP means the same here)."""
    body = {"amountCents": args.amount_cents} | ({"description": args.description} if args.description else {})
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    status, answer = _as_operator(s, "POST", f"/workspaces/{args.workspace_id}/billing/credits", body, headers)
    if status != 202:
        print(f"billing: {answer.get('detail') or answer}", file=sys.stderr)
        return 1
    return _answer(_services().operations.get(OPERATOR_CALLER, answer["id"]), args)


def _pages(s, path: str, params: dict) -> int:
    """Print every item of a list endpoint (as the operator sees it), one JSON object a line, following cursors."""
    query = {key: value for key, value in params.items() if value is not None} | {"limit": 200}
    while True:
        status, answer = _as_operator(s, "GET", path, None, {}, query)
        if status != 200:
            print(f"billing: {answer.get('detail') or answer}", file=sys.stderr)
            return 1
        for item in answer["data"]:
            print(json.dumps(item))
        if answer["nextCursor"] is None:
            return 0
        query["cursor"] = answer["nextCursor"]


def _cmd_grants(args, s) -> int:
    """GET .../billing/grants with the operator key: the workspace's default account's grants, newest first."""
    return _pages(s, f"/workspaces/{args.workspace_id}/billing/grants", {"status": args.status})


def _cmd_holds_list(args, s) -> int:
    return _pages(s, f"/workspaces/{args.workspace_id}/billing/holds", {"status": args.status})


def _cmd_holds_release(args, s) -> int:
    status, answer = _as_operator(s, "POST", f"/workspaces/{args.workspace_id}/billing/holds/{args.hold_id}/release",
                                  None, {})
    print(json.dumps(answer) if status == 200 else f"billing: {answer.get('detail') or answer}",
          file=sys.stdout if status == 200 else sys.stderr)
    return 0 if status == 200 else 1


def _cmd_holds_expire(args, s) -> int:
    print(f"released {_services().holds.expire_due()} expired hold(s)")
    return 0


def _cmd_expire(args, s) -> int:
    print(f"expired {_services().grants.expire_due()} grant(s)")
    return _cmd_holds_expire(args, s)


def _as_operator(s, method: str, path: str, body: dict | None, headers: dict,
                 params: dict | None = None) -> tuple[int, dict]:
    """Send one request to the API's app in this process with the operator key: (status, JSON answer)."""
    # Falcon and the API's app are loaded only by the commands that send the app a request.
    from falcon import testing

    from api.app import create_app

    token = s.operator_token or secrets.token_hex(24)  # without one configured, a key for this process only
    app = create_app(_services(), token, {})
    result = testing.simulate_request(app, method, path, json=body, params=params,
                                      headers=headers | {"Authorization": f"Bearer {token}"})
    return result.status_code, result.json if result.content else {}


def _cmd_tiers_refresh(args, s) -> int:
    if args.all:
        print(f"recomputed the tiers of {_services().rate_limits.refresh_all()} billing account(s)")
        return 0
    return _answer(_services().rate_limits.request_refresh(OPERATOR_CALLER, args.workspace_id, None), args)


def _bounded(kind: str, low: int, high: int):
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: {kind} must be a whole number from {low} to {high}")
        return int(text)
    return parse


def _text(limit: int, low: int = 0):
    def parse(text: str) -> str:
        if not low <= len(text) <= limit or not text.isprintable():
            raise argparse.ArgumentTypeError(f"must be {low} to {limit} printable characters")
        return text
    return parse


def _wait_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--wait", action="store_true", help="poll until a worker has applied it; exit 1 "
                         "if it failed or is still unfinished after --timeout")
    command.add_argument("--timeout", type=_bounded("--timeout", 1, 3600), default=60, help="seconds (default 60)")


def _operator_commands(sub) -> None:
    what = ("run the Stripe and x402 reconcile jobs once (beat runs them every 60 and 30 s): Stripe is asked "
            "about pending checkouts, pending x402 payments are settled again")
    reconcile = sub.add_parser("reconcile", help=what, description=what)
    reconcile.add_argument("--provider", choices=("stripe", "x402", "all"), default="all")
    reconcile.add_argument("--older-than", type=_bounded("--older-than", 0, 7 * 86400), metavar="SECONDS",
                           help="only what has been pending this long (default: the beat jobs' ages)")
    reconcile.set_defaults(run=_cmd_reconcile)
    what = ("grant credits to a workspace's default billing account, as POST /workspaces/{id}/billing/credits "
            "does with the operator key; prints the operation")
    credit = sub.add_parser("credit", help=what, description=what)
    credit.add_argument("workspace_id", metavar="WORKSPACE_ID")
    credit.add_argument("amount_cents", metavar="AMOUNT_CENTS", type=_bounded("AMOUNT_CENTS", 1, MAX_MOVEMENT_CENTS))
    credit.add_argument("--description", type=_text(500), default="")
    credit.add_argument("--idempotency-key", type=_text(255, low=1),
                        help="the same key again returns the first operation instead of crediting twice")
    _wait_options(credit)
    credit.set_defaults(run=_cmd_credit)
    tiers = sub.add_parser("tiers", help="rate-limit tiers: `billing tiers refresh`")
    what = ("recompute rate-limit tiers: one workspace's (queued, as POST .../rate-limits/refresh does) or, "
            "with --all, every billing account's, now")
    refresh = tiers.add_subparsers(dest="tiers_command", required=True).add_parser("refresh", help=what,
                                                                                   description=what)
    which = refresh.add_mutually_exclusive_group(required=True)
    which.add_argument("workspace_id", metavar="WORKSPACE_ID", nargs="?")
    which.add_argument("--all", action="store_true", help="every billing account, recomputed in this process")
    _wait_options(refresh)
    refresh.set_defaults(run=_cmd_tiers_refresh)
    _grant_and_hold_commands(sub)


def _grant_and_hold_commands(sub) -> None:
    what = ("print a workspace's credit grants (its default account's), newest first, one JSON object a line, as "
            "GET /workspaces/{id}/billing/grants shows them")
    grants = sub.add_parser("grants", help=what, description=what)
    grants.add_argument("workspace_id", metavar="WORKSPACE_ID")
    grants.add_argument("--status", choices=GRANT_STATUSES)
    grants.set_defaults(run=_cmd_grants)
    what = ("run the expiry jobs once (beat runs them every 30 and 15 s): debit what is left of each grant past its "
            "expiresAt, release each hold past its expiresAt")
    sub.add_parser("expire", help=what, description=what).set_defaults(run=_cmd_expire)
    holds = sub.add_parser("holds", help="holds: `billing holds list|release|expire`")
    commands = holds.add_subparsers(dest="holds_command", required=True)
    what = "print a workspace's holds, newest first, one JSON object a line"
    listed = commands.add_parser("list", help=what, description=what)
    listed.add_argument("workspace_id", metavar="WORKSPACE_ID")
    listed.add_argument("--status", choices=HOLD_STATUSES)
    listed.set_defaults(run=_cmd_holds_list)
    what = "release an active hold now (as POST .../holds/{id}/release does); prints the hold"
    release = commands.add_parser("release", help=what, description=what)
    release.add_argument("workspace_id", metavar="WORKSPACE_ID")
    release.add_argument("hold_id", metavar="HOLD_ID")
    release.set_defaults(run=_cmd_holds_release)
    what = "release every hold past its expiresAt now (beat does this every 15 s)"
    commands.add_parser("expire", help=what, description=what).set_defaults(run=_cmd_holds_expire)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="billing", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(run=_cmd_migrate)
    api = sub.add_parser("api", help="serve the HTTP API with granian")
    api.add_argument("--port", type=int)
    api.add_argument("--host", default="0.0.0.0", help="the address to listen on (default: every interface)")
    api.add_argument("--workers", type=int, default=2)
    api.add_argument("--threads", type=int, default=4)
    api.set_defaults(run=_cmd_api)
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default=ALL_QUEUES)
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--hostname", default="worker@%h", help="the name Flower shows (%%h: this host's name)")
    worker.set_defaults(run=_cmd_worker)
    beat = sub.add_parser("beat", help="run Celery beat (exactly one per deployment)")
    beat.add_argument("--state-dir", default=os.environ.get("BILLING_BEAT_STATE_DIR", "/tmp"))
    beat.set_defaults(run=_cmd_beat)
    flower = sub.add_parser("flower", help="run Flower, the Celery monitor, on the broker")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="0.0.0.0")
    flower.add_argument("--state-dir", default=os.environ.get("BILLING_FLOWER_STATE_DIR"),
                        help="keep Flower's task history in this directory across restarts (default: memory only)")
    flower.set_defaults(run=_cmd_flower)
    standalone = sub.add_parser("standalone", help="API, worker and beat in one command; without "
                                "DATABASE_URL/REDIS_URL on an embedded PostgreSQL")
    standalone.add_argument("--port", type=int)
    standalone.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: loopback "
                            "only, as it prints the operator key; 0.0.0.0 for every interface)")
    standalone.add_argument("--data-dir", default=os.environ.get("BILLING_DATA_DIR", ".billing-data"))
    standalone.set_defaults(run=_cmd_standalone)
    create_user = sub.add_parser("create-user", help="create a user and print its API key once")
    create_user.add_argument("email")
    create_user.add_argument("--name")
    create_user.set_defaults(run=_cmd_create_user)
    audit = sub.add_parser("audit", help="check the ledger's invariants; exit 1 on any break (notices, such as "
                                         "Stripe refunds beyond a checkout, are printed without failing)")
    audit.add_argument("--stuck-after", type=int, default=600, help="seconds before an unfinished operation counts as stuck")
    audit.set_defaults(run=_cmd_audit)
    sub.add_parser("relay", help="send unfinished operations, auto top-ups and card saves to the queue once (beat: "
                                 "every 10 s)").set_defaults(run=_cmd_relay)
    _operator_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, settings_module.load()) or 0
    except settings_module.SettingsError as exc:
        print(f"billing: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an operator tool answers with one line, not a trace
        if isinstance(exc, DomainError):
            print(f"billing: {exc.detail}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
