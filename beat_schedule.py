"""Periodic jobs by task name; every interval lives here."""

RELAY_EVERY_SECONDS = 10.0
BACKFILL_EVERY_SECONDS = 300.0
PURGE_IDEMPOTENCY_EVERY_SECONDS = 3600.0
RECONCILE_STRIPE_EVERY_SECONDS = 60.0
REFRESH_STALE_TIERS_EVERY_SECONDS = 60.0  # the age that counts as stale: BILLING_TIER_MAX_AGE_SECONDS
RECONCILE_X402_EVERY_SECONDS = 30.0

SCHEDULE = {
    "relay-outbox": {"task": "maintenance.relay_outbox", "schedule": RELAY_EVERY_SECONDS},
    "backfill-default-accounts": {"task": "accounts.backfill_default", "schedule": BACKFILL_EVERY_SECONDS},
    "reconcile-stripe": {"task": "payments.reconcile_stripe", "schedule": RECONCILE_STRIPE_EVERY_SECONDS},
    "refresh-stale-tiers": {"task": "tiers.refresh_stale", "schedule": REFRESH_STALE_TIERS_EVERY_SECONDS},
    "reconcile-x402": {"task": "payments.reconcile_x402", "schedule": RECONCILE_X402_EVERY_SECONDS},
    "purge-idempotency-keys": {"task": "maintenance.purge_idempotency_keys",
                               "schedule": PURGE_IDEMPOTENCY_EVERY_SECONDS},
}
