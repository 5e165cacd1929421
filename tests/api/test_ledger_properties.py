"""Random interleavings of credits (with grant terms), usage, grant expiries, holds placed, captured and released,
links, unlinks, default switches and a worker that reorders and redelivers its messages keep every ledger invariant
after every step (a hypothesis state machine): balance = entries = the remaining amounts of the active grants, each
drawn in the contract's order, and available = balance - what unsettled holds reserve, never below zero."""
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, Phase, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, \
    run_state_machine_as_test
from sqlalchemy import text

from domain.names import Task
from tests.api.checks import assert_problem
from tests.factories import UserKey

# Shrinking and explaining rerun examples over the real app and database for minutes (past the suite's
# timeout): a failure prints its whole sequence of steps instead, to be replayed as an explicit test below.
SETTINGS = settings(max_examples=12, stateful_step_count=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow], phases=[Phase.explicit, Phase.generate])
PICK = st.integers(min_value=0, max_value=11)  # an index into what exists, modulo its length
KEY = st.none() | st.integers(min_value=0, max_value=2)  # a few Idempotency-Keys per example, so they repeat
EVENT = st.tuples(st.integers(0, 5), st.integers(1, 700), st.sampled_from(["tokens", "images"]), st.integers(1, 2))
DELIVERIES = st.lists(st.integers(0, 10_000), max_size=2)  # messages the worker applies meanwhile
BAD_AMOUNTS = [0, -5, 100_000_001, 12.5, "100", True, None]
FAR_AWAY = timedelta(days=1)  # the audit's "stuck" line: nothing here is stuck, however slow the run
TERMS = st.fixed_dictionaries({}, optional={"priority": st.sampled_from([0, 50, 90]),
                                            "expiresAt": st.sampled_from([1, 2, 3]),
                                            "category": st.sampled_from(["paid", "promotional"])})
NEVER = datetime.max.replace(tzinfo=UTC)

_ENTRIES = text("SELECT billing_account_id, amount_cents, balance_after_cents, idempotency_key FROM ledger_entries "
                "WHERE billing_account_id = ANY(:ids) ORDER BY id")
_ENTRIES_BY_ID = text("SELECT * FROM ledger_entries WHERE id = ANY(:ids)")
_BALANCES = text("SELECT id, balance_cents FROM billing_accounts WHERE id = ANY(:ids)")
_OPERATIONS = text("SELECT id, status FROM operations WHERE workspace_id = ANY(:ids)")
_GRANTS = text("SELECT e.idempotency_key, g.remaining_cents, g.status, g.category FROM grants g "
               "JOIN ledger_entries e ON e.id = g.entry_id WHERE g.billing_account_id = ANY(:ids)")
_EXPIRE_NOW = text("UPDATE grants g SET expires_at = now() - interval '1 second' FROM ledger_entries e "
                   "WHERE e.id = g.entry_id AND e.idempotency_key = :key AND g.billing_account_id = :account")


@dataclass
class ModelHold:
    id: str
    workspace: "Workspace"
    account: str
    amount: int
    status: str = "active"
    reserving: bool = True
    operation: str | None = None  # its capture's


@dataclass
class ModelGrant:
    key: str  # the credit's ledger key
    order: tuple  # (priority, expiresAt, entry id): debits draw in this order
    remaining: int
    category: str
    status: str = "active"
    expires: bool = False


@dataclass
class Workspace:
    id: str
    owner: str
    default: str
    linked: set[str]
    roles: dict[str, str]
    consumed: dict[str, tuple] = field(default_factory=dict)  # eventId -> (metric, quantity, cents, txn id)


@dataclass
class Queued:
    """An accepted money movement: its account is the workspace default when it was accepted."""
    id: str
    kind: str
    workspace: Workspace
    account: str
    body: dict


class LedgerMachine(RuleBasedStateMachine):
    """The real app (over HTTP, in process) and the worker's operation service on the real database, against
    a model: each account's postings in ledger order; each workspace's default, links, roles and consumed
    eventIds; each accepted operation with the account it was bound to. Everything is scoped to this
    example's own users and workspaces: the database is shared by the whole run."""

    def __init__(self, api, services, queue, engine) -> None:
        super().__init__()
        self.api, self.services, self.queue, self.engine = api, services, queue, engine
        self.tag = uuid.uuid4().hex[:10]
        self.users: list[UserKey] = []
        self.owner_of: dict[str, str] = {}  # billing account -> owning user id
        self.postings: dict[str, list[int]] = {}  # billing account -> amounts in ledger order
        self.workspaces: list[Workspace] = []
        self.ops: dict[str, Queued] = {}
        self.unfinished: set[str] = set()
        self.keys: dict[str, tuple[str, str, str]] = {}  # Idempotency-Key -> (path, body, operation id)
        self.grants: dict[str, list[ModelGrant]] = {}  # billing account -> its grants
        self.holds: list[ModelHold] = []
        self.first_message = len(queue.sent)

    # -- picking among what exists -------------------------------------------------------------------------

    def _user(self, i: int) -> UserKey:
        return self.users[i % len(self.users)]

    def _ws(self, i: int) -> Workspace:
        return self.workspaces[i % len(self.workspaces)]

    def _actor(self, ws: Workspace, i: int) -> UserKey:
        """Mostly (i < 8) the owner or an admin, who may manage the workspace; else a member or a stranger."""
        managers = [u for u in self.users if ws.roles.get(u.id) in ("owner", "admin")]
        others = [u for u in self.users if u not in managers]
        group = managers if i < 8 or not others else others
        return group[i % len(group)]

    def _account(self, i: int) -> str:
        return list(self.owner_of)[i % len(self.owner_of)]  # in creation order: a replay picks the same

    def _candidate(self, ws: Workspace, i: int, *, but_default: bool = False) -> str:
        """Mostly (i < 8) an account linked to the workspace (but_default: other than its default), else the
        default or one that is not linked."""
        linked = [a for a in self.owner_of if a in ws.linked and not (but_default and a == ws.default)]
        others = [ws.default, *(a for a in self.owner_of if a not in ws.linked)]
        return linked[i % len(linked)] if i < 8 and linked else others[max(i - 8, 0) % len(others)]

    def _messages(self) -> list[str]:
        """Operation ids the service sent to the (recording) broker, in sending order."""
        return [kw["operation_id"] for task, kw in self.queue.sent[self.first_message:]
                if task == Task.APPLY_OPERATION and kw["operation_id"] in self.ops]

    @staticmethod
    def _refusal(ws: Workspace, user: UserKey) -> int | None:
        """Managing a workspace's billing: 404 for a stranger, 403 for a plain member, None when allowed."""
        role = ws.roles.get(user.id)
        return 404 if role is None else 403 if role == "member" else None

    @staticmethod
    def _expect(result, status: int) -> bool:
        """The answer has this status (a problem+json one for an error); True when it succeeded."""
        if status >= 400:
            assert_problem(result, status)
            return False
        assert result.status_code == status, result.text
        return True

    # -- people, workspaces, links -----------------------------------------------------------------------

    @initialize()
    def a_small_company(self) -> None:
        """Ada's Lab (Bob admin, Cyd member) and Bob's Ops (Ada member). Bob's default account is the default
        of both; Ada's default and a second account of hers, empty, are linked to the Lab too."""
        ada, bob, cyd = (self._new_user() for _ in range(3))
        lab, ops = self._new_workspace(ada, None), self._new_workspace(bob, None)
        self._add_member(lab, ada, bob, "admin")
        self._add_member(lab, ada, cyd, "member")
        self._add_member(ops, bob, ada, "member")
        self._change_links(lab, bob, bob.default_account_id, "link")
        self._change_links(lab, ada, bob.default_account_id, "default")
        self._change_links(lab, ada, None, "create")

    def _new_user(self) -> UserKey:
        user = self.api.new_user(f"P{self.tag}")
        self.users.append(user)
        self.owner_of[user.default_account_id] = user.id
        self.postings[user.default_account_id] = [1000]
        self.grants[user.default_account_id] = [ModelGrant(f"intro:{user.id}", (50, NEVER, 0), 1000, "promotional")]
        return user

    def _new_workspace(self, user: UserKey, account: str | None) -> Workspace | None:
        result = self.api.call("POST", "/workspaces", user.key, json={"name": "Lab"} | (
            {} if account is None else {"billingAccountId": account}))
        bound = account or user.default_account_id
        if not self._expect(result, 201 if self.owner_of[bound] == user.id else 404):
            return None
        assert result.json["defaultBillingAccountId"] == bound
        self.workspaces.append(Workspace(result.json["id"], user.id, bound, {bound}, {user.id: "owner"}))
        return self.workspaces[-1]

    def _add_member(self, ws: Workspace, user: UserKey, member: UserKey, role: str) -> None:
        result = self.api.call("POST", f"/workspaces/{ws.id}/members", user.key,
                               json={"userId": member.id, "role": role})
        if self._expect(result, self._refusal(ws, user) or (409 if member.id == ws.owner else 201)):
            ws.roles[member.id] = role

    def _change_links(self, ws: Workspace, user: UserKey, account: str | None, change: str) -> None:
        """Create-and-link, link, unlink, or make default, as `user`; then the workspace lists what the
        model holds."""
        path, owned, linked = f"/workspaces/{ws.id}/billing/accounts", self.owner_of.get(account) == user.id, \
            account in ws.linked
        if change == "create":
            result, expected = self.api.call("POST", path, user.key, json={"name": "Side"}), 201
        elif change == "link":
            result = self.api.call("POST", path + "/link", user.key, json={"billingAccountId": account})
            expected = 404 if not owned else 200 if linked else 201
        elif change == "unlink":
            result = self.api.call("DELETE", f"{path}/{account}", user.key)
            expected = 409 if account == ws.default else 204 if linked else 404
        else:  # a linked account may become the default, whoever owns it
            result = self.api.call("POST", f"{path}/{account}/default", user.key)
            expected = 200 if linked else 404 if not owned else 409
        if self._expect(result, self._refusal(ws, user) or expected):
            if change == "create":
                account = result.json["id"]
                assert (result.json["balanceCents"], result.json["ownerUserId"]) == (0, user.id)
                self.owner_of[account], self.postings[account], self.grants[account] = user.id, [], []
            ws.linked = ws.linked - {account} if change == "unlink" else ws.linked | {account}
            ws.default = account if change == "default" else ws.default
        owner = next(u for u in self.users if u.id == ws.owner)
        listed = self.api.call("GET", path, owner.key).json["data"]
        assert {(a["id"], a["isWorkspaceDefault"], a["balanceCents"]) for a in listed} == {
            (a, a == ws.default, sum(self.postings[a])) for a in ws.linked}

    @precondition(lambda self: len(self.users) < 4)
    @rule(account=st.none() | PICK)
    def a_newcomer_opens_a_workspace(self, account: int | None) -> None:
        """With their own default account, or with someone else's (404)."""
        user = self._new_user()
        self._new_workspace(user, None if account is None else self._account(account))

    @rule(ws=PICK, who=PICK, whom=PICK, role=st.sampled_from(["admin", "member"]))
    def add_member(self, ws: int, who: int, whom: int, role: str) -> None:
        ws = self._ws(ws)
        self._add_member(ws, self._actor(ws, who), self._user(whom), role)

    @rule(ws=PICK, who=PICK, account=PICK, change=st.sampled_from(["create", "link", "unlink"]))
    def change_links(self, ws: int, who: int, account: int, change: str) -> None:
        ws = self._ws(ws)
        self._change_links(ws, self._actor(ws, who), self._candidate(ws, account), change)

    @rule(ws=PICK, who=PICK, account=PICK)
    def switch_default(self, ws: int, who: int, account: int) -> None:
        ws = self._ws(ws)
        self._change_links(ws, self._actor(ws, who), self._candidate(ws, account, but_default=True), "default")

    # -- money movements, accepted now and applied later ---------------------------------------------------

    def _accept(self, kind: str, ws: Workspace, body: dict, key: int | None, *, valid: bool = True) -> None:
        """POST a money movement as the operator: 422 for an invalid body (which claims no key), the key's
        first answer again, 409 for a key used with another request, or a new operation on the workspace's
        current default account."""
        path = f"/workspaces/{ws.id}/billing/{'credits' if kind == 'credit' else 'usage'}"
        key, sent = None if key is None else f"{self.tag}-key-{key}", len(self.queue.sent)
        result = self.api.operator("POST", path, json=body, headers={"Idempotency-Key": key} if key else None)
        first, request = self.keys.get(key), (path, json.dumps(body))  # as sent: True is not 1
        if not valid or first is not None:
            if not valid:
                assert_problem(result, 422)
            elif first[:2] != request:
                assert_problem(result, 409)
            else:
                assert result.status_code == 202 and result.json["id"] == first[2], result.text
            assert len(self.queue.sent) == sent  # nothing queued again
            return
        assert result.status_code == 202, result.text
        assert result.headers["Location"] == f"/operations/{result.json['id']}"
        assert result.json["id"] not in self.ops and result.json["status"] == "queued"
        self.ops[result.json["id"]] = Queued(result.json["id"], kind, ws, ws.default, body)
        self.unfinished.add(result.json["id"])
        if key:
            self.keys[key] = (*request, result.json["id"])

    @rule(ws=PICK, credits=st.lists(st.tuples(st.integers(1, 3000) | st.sampled_from(BAD_AMOUNTS), KEY, TERMS),
                                    min_size=1, max_size=3), then=DELIVERIES)
    def credit(self, ws: int, credits: list[tuple], then: list[int]) -> None:
        """Credits (several, so that a batch holds more than one of an account), some with a priority, an
        expiresAt (years ahead) or a category; meanwhile the worker may deliver some messages."""
        for cents, key, terms in credits:
            valid = type(cents) is int and 1 <= cents <= 100_000_000
            if "expiresAt" in terms:
                terms = terms | {"expiresAt": f"{datetime.now(UTC).year + terms['expiresAt']}-06-01T00:00:00Z"}
            self._accept("credit", self._ws(ws), {"amountCents": cents} | terms, key, valid=valid)
        self._deliver(then)

    def _held(self, account: str) -> int:
        return sum(h.amount for h in self.holds if h.account == account and h.reserving)

    def _expirable(self) -> list[tuple[str, ModelGrant]]:
        """Active grants with an expiresAt whose expiry leaves the holds of their account covered (the machine
        keeps balances >= 0; a capture that an expiry left uncovered is tests/api/test_holds.py's)."""
        return [(account, g) for account, gs in self.grants.items() for g in gs if g.expires and g.status == "active"
                and sum(self.postings[account]) - g.remaining >= self._held(account)]

    @rule(ws=PICK, cents=st.integers(1, 1500), key=KEY)
    def place_hold(self, ws: int, cents: int, key: int | None) -> None:
        """A hold on the workspace's default account: 201 when what is available covers it, else 402."""
        ws = self._ws(ws)
        result = self.api.operator("POST", f"/workspaces/{ws.id}/billing/holds", json={"amountCents": cents})
        available = sum(self.postings[ws.default]) - self._held(ws.default)
        if self._expect(result, 201 if cents <= available else 402):
            assert (result.json["billingAccountId"], result.json["amountCents"]) == (ws.default, cents)
            self.holds.append(ModelHold(result.json["id"], ws, ws.default, cents))

    @precondition(lambda self: self.holds)
    @rule(pick=PICK, cents=st.integers(0, 1500), then=DELIVERIES)
    def capture_hold(self, pick: int, cents: int, then: list[int]) -> None:
        """Capture (queued): the first capture's operation again, 422 past the hold, 409 once it is not active."""
        hold = self.holds[pick % len(self.holds)]
        result = self.api.operator("POST", f"/workspaces/{hold.workspace.id}/billing/holds/{hold.id}/capture",
                                   json={"amountCents": cents})
        if hold.operation is not None:
            assert result.status_code == 202 and result.json["id"] == hold.operation, result.text
        elif self._expect(result, 422 if cents > hold.amount else 409 if hold.status != "active" else 202):
            hold.operation, hold.status = result.json["id"], "captured" if cents else "released"
            self.ops[hold.operation] = Queued(hold.operation, "hold_capture", hold.workspace, hold.account,
                                              {"amountCents": cents, "holdId": hold.id})
            self.unfinished.add(hold.operation)
        self._deliver(then)

    @precondition(lambda self: self.holds)
    @rule(pick=PICK)
    def release_hold(self, pick: int) -> None:
        hold = self.holds[pick % len(self.holds)]
        result = self.api.operator("POST", f"/workspaces/{hold.workspace.id}/billing/holds/{hold.id}/release")
        if self._expect(result, 409 if hold.status == "captured" else 200):
            if hold.status == "active":
                hold.status, hold.reserving = "released", False
            assert result.json["status"] == hold.status

    @precondition(lambda self: self._expirable())
    @rule(pick=PICK)
    def a_grant_expires(self, pick: int) -> None:
        """Time passes a grant's expiresAt: the beat job debits what is left of it, once however often it runs."""
        due = self._expirable()
        account, grant = due[pick % len(due)]
        with self.engine.begin() as conn:
            conn.execute(_EXPIRE_NOW, {"key": grant.key, "account": account})
        self.services.grants.expire_due()
        self.services.grants.expire_due()
        self.postings[account].append(-grant.remaining)
        grant.remaining, grant.status = 0, "expired"

    @rule(ws=PICK, events=st.lists(EVENT, min_size=1, max_size=4), key=KEY, then=DELIVERIES)
    def record_usage(self, ws: int, events: list[tuple], key: int | None, then: list[int]) -> None:
        body = {"events": [{"eventId": f"ev-{n}", "metric": metric, "quantity": quantity, "amountCents": cents}
                           for n, cents, metric, quantity in events]}
        self._accept("usage", self._ws(ws), body, key)
        self._deliver(then)

    # -- the worker: messages applied in any order, some more than once ------------------------------------

    @precondition(lambda self: self._messages())
    @rule(picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=5))
    def the_worker_delivers(self, picks: list[int]) -> None:
        self._deliver(picks)

    def _deliver(self, picks: list[int]) -> None:
        """Messages in any order, finished ones again (a redelivery), the same one twice in a row."""
        messages = self._messages()
        for pick in picks if messages else []:
            self._apply(messages[pick % len(messages)])

    def _apply(self, operation_id: str) -> None:
        """Apply as the worker does; then take in every operation of ours that finished meanwhile (any
        message applies the queued credits, in batches)."""
        predicted = None
        if operation_id in self.unfinished and self.ops[operation_id].kind == "usage":
            predicted = self._plan(self.ops[operation_id])  # usage is applied by its own message only
        self.services.operations.apply(operation_id)
        self._take_in_finished(predicted)
        assert predicted is None or operation_id not in self.unfinished, f"usage {operation_id} left unapplied"

    def _plan(self, op: Queued) -> list[tuple[str, str, int | None]]:
        """What a usage batch must do now: (eventId, debited|duplicate|refused, balance after a debit)."""
        balance, seen, planned = sum(self.postings[op.account]), set(op.workspace.consumed), []
        held = self._held(op.account)
        for event in op.body["events"]:
            if event["eventId"] in seen:
                planned.append((event["eventId"], "duplicate", None))
            elif event["amountCents"] > balance - held:
                planned.append((event["eventId"], "refused", None))
            else:
                balance -= event["amountCents"]
                seen.add(event["eventId"])
                planned.append((event["eventId"], "debited", balance))
        return planned

    def _take_in_finished(self, predicted: list | None) -> None:
        """Check each operation of ours that finished against its ledger entries and fold it into the model,
        credits in ledger order; `predicted` is the plan of the usage batch just applied, if any."""
        with self.engine.connect() as conn:
            statuses = dict(conn.execute(_OPERATIONS, {"ids": [w.id for w in self.workspaces]}).all())
        done = sorted(i for i in self.unfinished if statuses[i] != "queued")
        results = {i: self.api.operator("GET", f"/operations/{i}").json for i in done}
        entry_of = self.services.ctx.ids.entry_of
        txn_ids = [entry_of(r["result"]["transactionId"]) for r in results.values() if r["kind"] == "credit"]
        txn_ids += [entry_of(e["transactionId"]) for r in results.values() if r["kind"] == "usage"
                    for e in r["result"]["events"] if e["transactionId"]]
        txn_ids += [entry_of(r["result"]["transactionId"]) for r in results.values()
                    if r["kind"] == "hold_capture" and r["result"]["transactionId"]]
        with self.engine.connect() as conn:
            entries = {row.id: row for row in conn.execute(_ENTRIES_BY_ID, {"ids": txn_ids})}
        credits = sorted((i for i in done if self.ops[i].kind == "credit"),
                         key=lambda i: entry_of(results[i]["result"]["transactionId"]))
        for operation_id in credits:
            self._take_in_credit(self.ops[operation_id], results[operation_id], entries)
        for operation_id in (i for i in done if self.ops[i].kind == "usage"):
            assert predicted is not None, f"usage {operation_id} applied by another operation's message"
            self._take_in_usage(self.ops[operation_id], results[operation_id], predicted, entries)
        for operation_id in (i for i in done if self.ops[i].kind == "hold_capture"):
            self._take_in_capture(self.ops[operation_id], results[operation_id], entries)
        self.unfinished -= set(done)

    def _take_in_capture(self, op: Queued, found: dict, entries: dict) -> None:
        assert found["status"] == "succeeded", found
        hold, cents, result = next(h for h in self.holds if h.id == op.body["holdId"]), op.body["amountCents"], \
            found["result"]
        assert (result["holdId"], result["capturedCents"], result["releasedCents"]) == (hold.id, cents,
                                                                                        hold.amount - cents)
        if cents:
            entry = entries[self.services.ctx.ids.entry_of(result["transactionId"])]
            assert (entry.kind, entry.amount_cents, entry.idempotency_key) == ("usage", -cents, f"hold:{hold.id}")
            assert entry.balance_after_cents == sum(self.postings[op.account]) - cents
            self.postings[op.account].append(-cents)
            self._draw(op.account, cents)
        else:
            assert result["transactionId"] is None
        hold.reserving = False

    def _take_in_credit(self, op: Queued, found: dict, entries: dict) -> None:
        assert found["status"] == "succeeded", found
        result = found["result"]
        entry = entries[self.services.ctx.ids.entry_of(result["transactionId"])]
        assert (result["billingAccountId"], result["amountCents"]) == (op.account, op.body["amountCents"])
        assert (entry.billing_account_id, entry.workspace_id, entry.kind, entry.amount_cents) == (
            op.account, op.workspace.id, "credit_grant", op.body["amountCents"])
        assert (entry.idempotency_key, entry.reference) == (f"op:{op.id}", op.id)
        assert result["balanceAfterCents"] == entry.balance_after_cents == sum(self.postings[op.account]) + \
            op.body["amountCents"]
        self.postings[op.account].append(op.body["amountCents"])
        expires = op.body.get("expiresAt")
        order = (op.body.get("priority", 50), datetime.fromisoformat(expires) if expires else NEVER, entry.id)
        self.grants[op.account].append(ModelGrant(f"op:{op.id}", order, op.body["amountCents"],
                                                  op.body.get("category", "promotional"), expires=bool(expires)))

    def _draw(self, account: str, cents: int) -> None:
        """The model's draw: the active grants in the contract's order."""
        for grant in sorted((g for g in self.grants[account] if g.status == "active"), key=lambda g: g.order):
            take = min(cents, grant.remaining)
            grant.remaining, cents = grant.remaining - take, cents - take
            grant.status = "active" if grant.remaining else "depleted"
            if cents == 0:
                return

    def _take_in_usage(self, op: Queued, found: dict, predicted: list, entries: dict) -> None:
        assert found["status"] == "succeeded", found
        result, events = found["result"], op.body["events"]
        assert [(e["eventId"], e["status"]) for e in result["events"]] == [p[:2] for p in predicted]
        debited = [e for e, p in zip(events, predicted) if p[1] == "debited"]
        assert (result["billingAccountId"], result["workspaceId"]) == (op.account, op.workspace.id)
        assert (result["debited"], result["debitedCents"]) == (len(debited), sum(e["amountCents"] for e in debited))
        assert (result["duplicates"], result["refused"]) == tuple(
            sum(p[1] == s for p in predicted) for s in ("duplicate", "refused"))
        for event, outcome, (_, status, after) in zip(events, result["events"], predicted):
            if status == "refused":
                assert outcome["transactionId"] is None and outcome["reason"].startswith("insufficient_funds")
            elif status == "debited":
                entry = entries[self.services.ctx.ids.entry_of(outcome["transactionId"])]
                assert (entry.billing_account_id, entry.workspace_id, entry.kind, entry.amount_cents,
                        entry.balance_after_cents, entry.reference) == (
                    op.account, op.workspace.id, "usage", -event["amountCents"], after, event["eventId"])
                op.workspace.consumed[event["eventId"]] = (
                    event["metric"], event["quantity"], event["amountCents"], outcome["transactionId"])
                self.postings[op.account].append(-event["amountCents"])
                self._draw(op.account, event["amountCents"])
            else:
                first = op.workspace.consumed[event["eventId"]]
                assert outcome["transactionId"] == first[3]
                assert ("first stands" in outcome["reason"]) == (
                    first[:3] != (event["metric"], event["quantity"], event["amountCents"]))
        assert result["balanceAfterCents"] == sum(self.postings[op.account])

    # -- reads ---------------------------------------------------------------------------------------------

    @rule(ws=PICK, who=PICK, account=PICK)
    def a_user_reads_and_cannot_move_money(self, ws: int, who: int, account: int) -> None:
        ws = self._ws(ws)
        user, account = self._actor(ws, who), self._account(account)
        refusal = 403 if user.id in ws.roles else 404  # a stranger does not learn that the workspace exists
        assert_problem(self.api.call("POST", f"/workspaces/{ws.id}/billing/credits", user.key,
                                     json={"amountCents": 5}), refusal)
        mine = self.api.call("GET", f"/billing-accounts/{account}/balance", user.key)
        if self._expect(mine, 200 if self.owner_of[account] == user.id else 404):
            assert mine.json["balanceCents"] == sum(self.postings[account])
        summary = self.api.call("GET", f"/workspaces/{ws.id}/billing/summary", user.key)
        if self._expect(summary, 200 if user.id in ws.roles else 404):
            amounts = self.postings[ws.default]
            assert (summary.json["billingAccountId"], summary.json["balanceCents"]) == (ws.default, sum(amounts))
            assert (summary.json["totalCreditedCents"], summary.json["totalDebitedCents"]) == (
                sum(a for a in amounts if a > 0), -sum(a for a in amounts if a < 0))
            assert summary.json["transactionCount"] == len(amounts)
        page = self.api.call("GET", f"/workspaces/{ws.id}/billing/transactions", user.key,
                             params={"billingAccountId": account, "limit": "200"})
        if self._expect(page, 200 if user.id in ws.roles and account in ws.linked else 404):
            assert [t["amountCents"] for t in page.json["data"]] == self.postings[account][::-1]

    # -- invariants ----------------------------------------------------------------------------------------

    @invariant()
    def every_invariant_holds(self) -> None:
        self._each_ledger_is_the_model_and_chains_and_never_goes_below_zero()
        self._every_accepted_request_is_one_operation_of_ours()
        self._the_audit_finds_nothing_wrong_with_our_accounts()
        self._each_workspace_reads_its_default_account()
        self._each_grant_holds_what_the_model_drew_from_it()

    def _each_ledger_is_the_model_and_chains_and_never_goes_below_zero(self) -> None:
        accounts = list(self.owner_of)
        with self.engine.connect() as conn:
            entries = conn.execute(_ENTRIES, {"ids": accounts}).all()
            cached = dict(conn.execute(_BALANCES, {"ids": accounts}).all())
        for account in accounts:
            own = [e for e in entries if e.billing_account_id == account]
            assert [e.amount_cents for e in own] == self.postings[account], account
            running = 0
            for entry in own:
                running += entry.amount_cents
                assert entry.balance_after_cents == running >= 0, (account, entry)
            assert cached[account] == running == sum(self.postings[account])
        keys = Counter(e.idempotency_key for e in entries)
        assert max(keys.values(), default=1) == 1
        finished_credits = {f"op:{i}" for i, op in self.ops.items() if op.kind == "credit" and i not in self.unfinished}
        assert {k for k in keys if k.startswith("op:")} == finished_credits  # one movement per operation
        consumed = {f"usage:{ws.id}:{event_id}" for ws in self.workspaces for event_id in ws.consumed}
        assert {k for k in keys if k.startswith("usage:")} == consumed

    def _every_accepted_request_is_one_operation_of_ours(self) -> None:
        with self.engine.connect() as conn:
            statuses = dict(conn.execute(_OPERATIONS, {"ids": [w.id for w in self.workspaces]}).all())
        assert statuses.keys() == self.ops.keys()
        assert {i for i, s in statuses.items() if s != "succeeded"} == self.unfinished
        assert set(statuses.values()) <= {"queued", "succeeded"}

    def _the_audit_finds_nothing_wrong_with_our_accounts(self) -> None:
        ours = [*self.owner_of, *self.ops]
        assert [p for p in self.services.audit.problems(stuck_after=FAR_AWAY) if any(i in p for i in ours)] == []

    def _each_workspace_reads_its_default_account(self) -> None:
        for ws in self.workspaces:
            owner = next(u for u in self.users if u.id == ws.owner)
            balance = self.api.call("GET", f"/workspaces/{ws.id}/billing/balance", owner.key).json
            assert (balance["billingAccountId"], balance["balanceCents"]) == (ws.default,
                                                                              sum(self.postings[ws.default]))
            assert balance["availableCents"] == sum(self.postings[ws.default]) - self._held(ws.default) >= 0
            active = [g for g in self.grants[ws.default] if g.status == "active"]
            assert (balance["paidCents"], balance["promotionalCents"]) == tuple(
                sum(g.remaining for g in active if g.category == c) for c in ("paid", "promotional"))

    def _each_grant_holds_what_the_model_drew_from_it(self) -> None:
        with self.engine.connect() as conn:
            found = {row.idempotency_key: (row.remaining_cents, row.status, row.category)
                     for row in conn.execute(_GRANTS, {"ids": list(self.owner_of)})}
        assert found == {g.key: (g.remaining, g.status, g.category) for gs in self.grants.values() for g in gs}
        for account, grants in self.grants.items():
            assert sum(g.remaining for g in grants if g.status == "active") == sum(self.postings[account])

    def teardown(self) -> None:
        """Apply what is still queued, so no credit of ours is left to the tests that follow."""
        for operation_id in [i for i in self.ops if i in self.unfinished]:
            self.services.operations.apply(operation_id)


def test_random_interleavings_keep_every_ledger_invariant(api, services, queue, engine):
    run_state_machine_as_test(lambda: LedgerMachine(api, services, queue, engine), settings=SETTINGS)


def replay(machine: LedgerMachine, *steps: tuple[str, dict]) -> None:
    """Run a sequence of steps as hypothesis printed it, every invariant checked after each."""
    try:
        for name, arguments in steps:
            getattr(machine, name)(**arguments)
            machine.every_invariant_holds()
    finally:
        machine.teardown()


def test_a_redelivered_usage_message_applies_the_credits_queued_before_it_after_its_own_debits(
        api, services, queue, engine):
    """Found by the machine, whose model took the credit in first: a usage message applies its own batch
    only, and its redelivery is a wake-up that applies the credit queued before the batch."""
    machine = LedgerMachine(api, services, queue, engine)
    replay(machine, ("a_small_company", {}),
           ("credit", {"ws": 0, "credits": [(219, None, {})], "then": []}),
           ("record_usage", {"ws": 0, "events": [(2, 386, "tokens", 2)], "key": None, "then": []}),
           ("the_worker_delivers", {"picks": [1, 1]}))
    assert machine.postings[machine.workspaces[0].default] == [1000, -386, 219]


def test_grants_are_drawn_by_priority_and_what_is_left_of_one_expires_once(api, services, queue, engine):
    """The machine's rules for grant terms and expiries, in one sequence that surely takes them."""
    machine = LedgerMachine(api, services, queue, engine)
    replay(machine, ("a_small_company", {}),
           ("credit", {"ws": 0, "credits": [(300, None, {"priority": 90}),
                                            (500, None, {"priority": 10, "expiresAt": 1})], "then": [0]}),
           ("record_usage", {"ws": 0, "events": [(1, 300, "tokens", 1)], "key": None, "then": [2]}),
           ("a_grant_expires", {"pick": 0}),
           ("record_usage", {"ws": 0, "events": [(2, 1200, "tokens", 1)], "key": None, "then": [3]}))
    account = machine.workspaces[0].default
    assert machine.postings[account] == [1000, 300, 500, -300, -200, -1200]
    assert [(g.remaining, g.status) for g in machine.grants[account]] == [(0, "depleted"), (100, "active"),
                                                                         (0, "expired")]
