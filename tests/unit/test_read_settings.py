"""DATABASE_READ_URL and BILLING_READ_MAX_LAG_MS: parsed once at start, a bad value named in one line."""
import pytest

from worker import settings

PRIMARY = "postgresql://billing@db1:5432/billing"


def test_read_urls_are_a_comma_separated_list_of_postgres_urls():
    loaded = settings.load({"DATABASE_URL": PRIMARY,
                            "DATABASE_READ_URL": " postgresql://billing@db2/billing, postgres://billing@db3/billing "})
    assert loaded.database_read_urls == ("postgresql://billing@db2/billing", "postgres://billing@db3/billing")
    assert loaded.read_max_lag_ms == 1000


def test_without_read_urls_there_are_no_replicas():
    assert settings.load({"DATABASE_URL": PRIMARY}).database_read_urls == ()


@pytest.mark.parametrize("env, named", [
    ({"DATABASE_URL": PRIMARY, "DATABASE_READ_URL": "redis://cache:6379"}, "DATABASE_READ_URL"),
    ({"DATABASE_READ_URL": "postgresql://billing@db2/billing"}, "DATABASE_READ_URL needs DATABASE_URL"),
    ({"DATABASE_URL": PRIMARY, "BILLING_READ_MAX_LAG_MS": "0"}, "BILLING_READ_MAX_LAG_MS"),
    ({"DATABASE_URL": PRIMARY, "BILLING_READ_MAX_LAG_MS": "1.5"}, "BILLING_READ_MAX_LAG_MS"),
])
def test_a_bad_read_setting_is_refused_by_name(env, named):
    with pytest.raises(settings.SettingsError, match=named):
        settings.load(env)
