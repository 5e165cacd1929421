"""Periodic jobs by task name; every interval lives here."""

RELAY_EVERY_SECONDS = 10.0
BACKFILL_EVERY_SECONDS = 300.0
PURGE_IDEMPOTENCY_EVERY_SECONDS = 3600.0
RECONCILE_STRIPE_EVERY_SECONDS = 60.0

SCHEDULE = {
    "relay-outbox": {"task": "maintenance.relay_outbox", "schedule": RELAY_EVERY_SECONDS},
    "backfill-default-accounts": {"task": "accounts.backfill_default", "schedule": BACKFILL_EVERY_SECONDS},
    "reconcile-stripe": {"task": "payments.reconcile_stripe", "schedule": RECONCILE_STRIPE_EVERY_SECONDS},
    "purge-idempotency-keys": {"task": "maintenance.purge_idempotency_keys",
                               "schedule": PURGE_IDEMPOTENCY_EVERY_SECONDS},
}
