"""Users, their API keys, and the default account every user gets."""
import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from domain.errors import Conflict, Forbidden, NotFound
from domain.grants import Terms
from domain.ids import default_account_id, new_id
from domain.models import BillingAccount, Caller, User
from domain.names import EntryKind, GrantSource, Task
from domain.services import grants
from domain.services.context import Config, Context
from domain.store import accounts, users
from domain.store.uow import Connection

DEFAULT_ACCOUNT_NAME = "Default"


def hash_key(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def provision_default_account(conn: Connection, user_id: str, config: Config) -> BillingAccount:
    """Ensure the user's default account and its one intro credit (a promotional grant, expiring after
    intro_credit_ttl_days when set); safe to run any number of times."""
    account = accounts.user_default(conn, user_id) or accounts.insert_account(
        conn, default_account_id(user_id), user_id, DEFAULT_ACCOUNT_NAME, is_user_default=True)
    if account is None:  # a concurrent run created it first
        account = accounts.user_default(conn, user_id)
    if config.intro_credit_cents > 0:
        ttl = config.intro_credit_ttl_days
        terms = Terms(GrantSource.INTRO, expires_at=datetime.now(UTC) + timedelta(days=ttl) if ttl else None)
        grants.credit(conn, account.id, config.intro_credit_cents, terms, kind=EntryKind.INTRO_CREDIT,
                      key=f"intro:{user_id}", description="Introductory credit")
    return account


class UserService:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def create(self, caller: Caller, email: str, name: str | None) -> tuple[User, str]:
        """Create a user with a default account and intro credit; the API key is returned once."""
        if not caller.is_operator:
            raise Forbidden("only the operator creates users")
        user_id, api_key = new_id("usr"), f"bk_{secrets.token_urlsafe(32)}"
        with self._ctx.uow() as uow:
            if not users.insert_user(uow.conn, user_id, email, name):
                raise Conflict("a user with this email exists")
            users.insert_api_key(uow.conn, new_id("key"), user_id, hash_key(api_key))
            account = provision_default_account(uow.conn, user_id, self._ctx.config)
            user = users.get(uow.conn, user_id)
            uow.after_commit(lambda: self._ctx.enqueue(Task.PROVISION_DEFAULT_ACCOUNT, user_id=user_id))
            uow.after_commit(lambda: self._ctx.enqueue(Task.RECOMPUTE_TIER, account_id=account.id))
            uow.commit()
        return user, api_key

    def me(self, caller: Caller) -> User:
        if caller.is_operator:
            raise Forbidden("the operator key belongs to no user")
        with self._ctx.uow() as uow:
            user = users.get(uow.conn, caller.user_id)
        if user is None:
            raise NotFound("user not found")
        return user

    def authenticate(self, api_key: str) -> Caller | None:
        with self._ctx.read() as uow:
            user_id = users.user_id_for_key(uow.conn, hash_key(api_key))
        return Caller(user_id=user_id) if user_id else None

    def provision_default(self, user_id: str) -> None:
        """The task's entry: the same idempotent provisioning the API ran synchronously."""
        with self._ctx.uow() as uow:
            if users.get(uow.conn, user_id) is None:
                return
            provision_default_account(uow.conn, user_id, self._ctx.config)
            uow.commit()

    def backfill_default_accounts(self, limit: int = 500) -> int:
        """Provision every user that has no default account (a beat job)."""
        with self._ctx.uow() as uow:
            missing = users.without_default_account(uow.conn, limit)
        for user_id in missing:
            self.provision_default(user_id)
        return len(missing)
