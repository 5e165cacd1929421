"""The tier rule at each boundary of the contract's table, and the table as configuration."""
import pytest

from domain.tiers import DEFAULT_TABLE, decide, parse_table


@pytest.mark.parametrize("balance, paid, tier, reason, rpm", [
    (1000, 0, "free", "paid < 500", 60),
    (1000, 499, "free", "paid < 500", 60),
    (1000, 500, "tier1", "paid >= 500", 600),
    (1000, 4_999, "tier1", "paid >= 500", 600),
    (1000, 5_000, "tier2", "paid >= 5000", 3_000),
    (1000, 49_999, "tier2", "paid >= 5000", 3_000),
    (1000, 50_000, "tier3", "paid >= 50000", 10_000),
    (1, 10**9, "tier3", "paid >= 50000", 10_000),
    (0, 50_000, "restricted", "balance <= 0", 10),
    (-1, 0, "restricted", "balance <= 0", 10),
    (1, -300, "free", "paid < 500", 60),  # refunds beyond top-ups
])
def test_each_boundary_of_the_table_decides_the_right_tier(balance, paid, tier, reason, rpm):
    decision = decide(balance, paid, DEFAULT_TABLE)
    assert (decision.tier, decision.reason, decision.requests_per_minute) == (tier, reason, rpm)


def test_a_configured_table_replaces_the_defaults():
    table = parse_table({"restricted": 5, "free": [0, 30], "gold": [1_000, 900]})
    assert decide(10, 999, table).tier == "free"
    assert (decide(10, 1_000, table).tier, decide(10, 1_000, table).requests_per_minute) == ("gold", 900)
    assert table.requests_per_minute("restricted") == 5 and table.requests_per_minute("gold") == 900


@pytest.mark.parametrize("bad", [
    [], {"free": [0, 60]}, {"restricted": 0, "free": [0, 60]}, {"restricted": 10},
    {"restricted": 10, "free": [1, 60]}, {"restricted": 10, "free": [0, 60], "t": [0, 100]},
    {"restricted": 10, "free": [0, "60"]}, {"restricted": 10, "free": [0, 60.5]}, {"restricted": 10, "free": [0]},
])
def test_a_malformed_table_is_refused(bad):
    with pytest.raises(ValueError):
        parse_table(bad)


def test_the_table_and_the_failure_mode_come_from_the_environment_and_bad_values_stop_the_start():
    from worker.settings import SettingsError, load

    loaded = load({"BILLING_TIERS": '{"restricted": 5, "free": [0, 30]}', "BILLING_RATE_LIMIT_FAILURE_MODE": "closed"})
    assert (loaded.tiers.restricted_rpm, loaded.tiers.paid[0].requests_per_minute) == (5, 30)
    assert loaded.rate_limit_fail_open is False and load({}).rate_limit_fail_open is True
    assert load({}).tiers == DEFAULT_TABLE
    for env in ({"BILLING_TIERS": "{bad"}, {"BILLING_TIERS": '{"free": [0, 60]}'},
                {"BILLING_RATE_LIMIT_FAILURE_MODE": "maybe"}):
        with pytest.raises(SettingsError):
            load(env)
