"""Periodic jobs by task name; every interval lives here."""
from domain.names import Task

RELAY_EVERY_SECONDS = 10.0
BACKFILL_EVERY_SECONDS = 300.0
PURGE_IDEMPOTENCY_EVERY_SECONDS = 3600.0
RECONCILE_STRIPE_EVERY_SECONDS = 60.0
REFRESH_STALE_TIERS_EVERY_SECONDS = 60.0  # the age that counts as stale: BILLING_TIER_MAX_AGE_SECONDS
RECONCILE_X402_EVERY_SECONDS = 30.0
RELAY_AUTO_TOP_UPS_EVERY_SECONDS = 10.0  # also asks Stripe about top-ups processing past STRIPE_RECONCILE_AFTER
EXPIRE_GRANTS_EVERY_SECONDS = 30.0  # a grant's remainder is debited at most this long after its expiresAt
EXPIRE_HOLDS_EVERY_SECONDS = 15.0  # a hold past its expiresAt stops reserving at most this long after it
# Due webhook deliveries (retries come due, lost messages) are sent at most this long after they are due; a
# new event's delivery is sent at once (the commit wakes the dispatcher), a retry due within a minute rides
# its own countdown message.
DISPATCH_WEBHOOKS_EVERY_SECONDS = 5.0
NOTICE_EXPIRING_GRANTS_EVERY_SECONDS = 300.0  # grant.expiring is sent at most this long after the 7-day mark

SCHEDULE = {
    "relay-outbox": {"task": Task.RELAY_OUTBOX, "schedule": RELAY_EVERY_SECONDS},
    "backfill-default-accounts": {"task": Task.BACKFILL_DEFAULT_ACCOUNTS, "schedule": BACKFILL_EVERY_SECONDS},
    "reconcile-stripe": {"task": Task.RECONCILE_STRIPE, "schedule": RECONCILE_STRIPE_EVERY_SECONDS},
    "refresh-stale-tiers": {"task": Task.REFRESH_STALE_TIERS, "schedule": REFRESH_STALE_TIERS_EVERY_SECONDS},
    "reconcile-x402": {"task": Task.RECONCILE_X402, "schedule": RECONCILE_X402_EVERY_SECONDS},
    "relay-auto-top-ups": {"task": Task.RELAY_AUTO_TOP_UPS, "schedule": RELAY_AUTO_TOP_UPS_EVERY_SECONDS},
    "expire-grants": {"task": Task.EXPIRE_GRANTS, "schedule": EXPIRE_GRANTS_EVERY_SECONDS},
    "expire-holds": {"task": Task.EXPIRE_HOLDS, "schedule": EXPIRE_HOLDS_EVERY_SECONDS},
    "dispatch-webhooks": {"task": Task.DISPATCH_WEBHOOKS, "schedule": DISPATCH_WEBHOOKS_EVERY_SECONDS},
    "notice-expiring-grants": {"task": Task.NOTICE_EXPIRING_GRANTS,
                               "schedule": NOTICE_EXPIRING_GRANTS_EVERY_SECONDS},
    "purge-idempotency-keys": {"task": Task.PURGE_IDEMPOTENCY_KEYS,
                               "schedule": PURGE_IDEMPOTENCY_EVERY_SECONDS},
}
