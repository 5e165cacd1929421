"""Configuration from the environment, validated once at start."""
import json
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from domain.tiers import DEFAULT_TABLE, TierTable, parse_table


class SettingsError(ValueError):
    """A configuration value is wrong; the message is the one line the operator sees."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    broker_url: str | None
    operator_token: str | None
    intro_credit_cents: int
    api_rate_limit: int
    port: int
    stripe_api_key: str | None
    stripe_webhook_secret: str | None
    stripe_api_base: str | None
    stripe_reconcile_after_seconds: int
    x402_facilitator_url: str | None
    x402_pay_to: str | None
    x402_network: str
    x402_asset: str | None
    x402_eip712_name: str | None = None  # default: the network's USDC domain name
    x402_eip712_version: str | None = None
    tiers: TierTable = DEFAULT_TABLE  # BILLING_TIERS
    tier_max_age_seconds: int = 900
    rate_limit_fail_open: bool = True
    broker_visibility_timeout: int = 3600  # BILLING_BROKER_VISIBILITY_TIMEOUT
    wake_interval_ms: int = 25  # BILLING_WAKE_INTERVAL_MS: the least time between two merged wake-ups
    # BILLING_HTTP_KEEPALIVE_SECONDS: longer than a load balancer's idle timeout (often 60 s), so the balancer,
    # not the API, closes an idle connection and never sends a request down one the API is closing
    http_keepalive_seconds: int = 75
    metrics_token: str | None = None  # BILLING_METRICS_TOKEN: a bearer token /metrics asks for when set
    idempotency_ttl_seconds: int = 86400  # BILLING_IDEMPOTENCY_TTL_SECONDS
    idempotency_lease_seconds: int = 60  # BILLING_IDEMPOTENCY_LEASE_SECONDS
    db_lock_timeout_ms: int = 500  # BILLING_DB_LOCK_TIMEOUT_MS: longest wait for a row lock
    db_statement_timeout_ms: int = 30000  # BILLING_DB_STATEMENT_TIMEOUT_MS: below the tasks' time limit
    # BILLING_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS: the server ends a session whose client went silent mid-transaction
    db_idle_in_transaction_timeout_ms: int = 10000
    otlp_endpoint: str | None = None  # OTEL_EXPORTER_OTLP_ENDPOINT: traces are exported there (worker.tracing)
    database_read_urls: tuple[str, ...] = ()  # DATABASE_READ_URL: read replicas, comma-separated
    read_max_lag_ms: int = 1000  # BILLING_READ_MAX_LAG_MS: a replica lagging more is skipped
    intro_credit_ttl_days: int | None = None  # BILLING_INTRO_CREDIT_TTL_DAYS; None: the intro credit never expires
    webhooks_allow_private: bool = False  # BILLING_WEBHOOKS_ALLOW_PRIVATE=1: http and private receivers too
    webhook_retry_scale: float = 1.0  # BILLING_WEBHOOK_RETRY_SCALE: the retry schedule and disabling window, scaled
    webhook_timeout_seconds: float = 10.0  # BILLING_WEBHOOK_TIMEOUT_SECONDS: a receiver's answer later fails



def _int(env: dict, name: str, default: int, *, low: int = 0, high: int = 2**62) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise SettingsError(f"{name}={raw!r} must be a whole number from {low} to {high}")
    return int(raw)


def _float(env: dict, name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw!r} must be a number from {low:g} to {high:g}")
    return value


def _url(env: dict, name: str, schemes: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip() or None
    if raw is not None and urlparse(raw).scheme.split("+")[-1] not in schemes:
        raise SettingsError(f"{name} must be a URL starting with one of: {', '.join(s + '://' for s in schemes)}")
    return raw


def database_broker(database_url: str | None) -> str | None:
    """Without Redis the broker is the database itself (kombu's SQLAlchemy transport): what standalone
    runs on, so that an operator command beside it (`billing credit --wait`) reaches the same queue."""
    if database_url is None:
        return None
    for scheme in ("postgresql://", "postgres://"):
        if database_url.startswith(scheme):
            return "sqla+postgresql+psycopg://" + database_url[len(scheme):]
    return "sqla+" + database_url


def load(env: dict | None = None) -> Settings:
    env = os.environ if env is None else env
    redis_url = _url(env, "REDIS_URL", ("redis", "rediss", "unix"))
    database_url = _url(env, "DATABASE_URL", ("postgresql", "postgres", "psycopg"))
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        broker_url=env.get("CELERY_BROKER_URL", "").strip() or redis_url or database_broker(database_url),
        operator_token=env.get("BILLING_OPERATOR_TOKEN", "").strip() or None,
        metrics_token=env.get("BILLING_METRICS_TOKEN", "").strip() or None,
        intro_credit_cents=_int(env, "BILLING_INTRO_CREDIT_CENTS", 1000, high=100_000_000),
        intro_credit_ttl_days=_int(env, "BILLING_INTRO_CREDIT_TTL_DAYS", 0, low=1, high=36500) or None,
        api_rate_limit=_int(env, "BILLING_API_RATE_LIMIT", 1200),
        port=_int(env, "PORT", 8000, low=1, high=65535),
        stripe_api_key=env.get("STRIPE_API_KEY") or None,
        stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
        stripe_api_base=_url(env, "STRIPE_API_BASE", ("http", "https")),
        stripe_reconcile_after_seconds=_int(env, "STRIPE_RECONCILE_AFTER", 300, high=7 * 86400),
        x402_facilitator_url=_url(env, "X402_FACILITATOR_URL", ("http", "https")),
        x402_pay_to=env.get("X402_PAY_TO") or None,
        x402_network=env.get("X402_NETWORK") or "eip155:84532",
        x402_asset=env.get("X402_ASSET") or None,
        x402_eip712_name=env.get("X402_EIP712_NAME") or None,
        x402_eip712_version=env.get("X402_EIP712_VERSION") or None,
        tiers=_tiers(env),
        tier_max_age_seconds=_int(env, "BILLING_TIER_MAX_AGE_SECONDS", 900, low=10, high=30 * 86400),
        rate_limit_fail_open=_choice(env, "BILLING_RATE_LIMIT_FAILURE_MODE", ("open", "closed")) == "open",
        broker_visibility_timeout=_int(env, "BILLING_BROKER_VISIBILITY_TIMEOUT", 3600, low=1, high=7 * 86400),
        wake_interval_ms=_int(env, "BILLING_WAKE_INTERVAL_MS", 25, high=10_000),
        http_keepalive_seconds=_int(env, "BILLING_HTTP_KEEPALIVE_SECONDS", 75, high=3600),
        idempotency_ttl_seconds=_int(env, "BILLING_IDEMPOTENCY_TTL_SECONDS", 86400, low=1, high=365 * 86400),
        idempotency_lease_seconds=_int(env, "BILLING_IDEMPOTENCY_LEASE_SECONDS", 60, low=1, high=86400),
        # a worker slot waits this long at most on a locked account, then retries it later (backoff)
        db_lock_timeout_ms=_int(env, "BILLING_DB_LOCK_TIMEOUT_MS", 500, low=1, high=600_000),
        # a statement may not run into the tasks' soft time limit (tasks.RETRY), where it would be cut off
        db_statement_timeout_ms=_int(env, "BILLING_DB_STATEMENT_TIMEOUT_MS", 30000, low=100, high=50_000),
        # no transaction of the service waits on its client (no network call inside one): a pause this long
        # means the client is gone, and its row locks would otherwise stay held until TCP notices (hours)
        db_idle_in_transaction_timeout_ms=_int(env, "BILLING_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 10000,
                                               low=1000, high=600_000),
        otlp_endpoint=_url(env, "OTEL_EXPORTER_OTLP_ENDPOINT", ("http", "https")),
        database_read_urls=_read_urls(env, database_url),
        read_max_lag_ms=_int(env, "BILLING_READ_MAX_LAG_MS", 1000, low=1, high=3_600_000),
        webhooks_allow_private=_choice(env, "BILLING_WEBHOOKS_ALLOW_PRIVATE", ("0", "1")) == "1",
        webhook_retry_scale=_float(env, "BILLING_WEBHOOK_RETRY_SCALE", 1.0, low=0.0001, high=1.0),
        webhook_timeout_seconds=_float(env, "BILLING_WEBHOOK_TIMEOUT_SECONDS", 10.0, low=0.1, high=30.0),
    )


def _read_urls(env: dict, database_url: str | None) -> tuple[str, ...]:
    """DATABASE_READ_URL: one or more PostgreSQL URLs, comma-separated; they need DATABASE_URL (the primary)."""
    urls = tuple(url.strip() for url in env.get("DATABASE_READ_URL", "").split(",") if url.strip())
    for url in urls:
        _url({"DATABASE_READ_URL": url}, "DATABASE_READ_URL", ("postgresql", "postgres", "psycopg"))
    if urls and database_url is None:
        raise SettingsError("DATABASE_READ_URL needs DATABASE_URL: the replicas' primary serves every write")
    return urls


def _tiers(env: dict) -> TierTable:
    raw = env.get("BILLING_TIERS", "").strip()
    if not raw:
        return DEFAULT_TABLE
    try:
        return parse_table(json.loads(raw))
    except ValueError as exc:
        raise SettingsError(f"BILLING_TIERS: {exc}") from None


def _choice(env: dict, name: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or choices[0]
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} must be one of: {', '.join(choices)}")
    return raw


def require(value: str | None, name: str) -> str:
    if not value:
        raise SettingsError(f"{name} is not set")
    return value
