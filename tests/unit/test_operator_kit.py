"""The operator kit in deploy/: alert rules promtool checks and tests, a dashboard and rules over metrics the
service really exports, Grafana and Prometheus wired to them in the compose file; and the metrics added for
them (the outbox's oldest operation, failed operations, dependencies up, the oldest pending checkout).

promtool comes from Debian's `prometheus` package (the README's test prerequisites; .ci/run installs it).
Without it these tests fail, naming the install command, unless BILLING_SKIP_PROMTOOL=1."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from falcon import testing
from sqlalchemy import text

from api.app import create_app
from api.metrics import MetricsPort
from domain.names import OperationStatus
from domain.services.context import Config, Context
from domain.services.registry import Services
from domain.store import operations
from domain.store.uow import UnitOfWork, make_engine
from tests.factories import OPERATOR_TOKEN, Api, prometheus_samples
from worker import container, metrics, settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS, ALERT_TESTS = DEPLOY / "alerts.yml", DEPLOY / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "billing.json"
INSTALL = "apt-get update && apt-get install -y --no-install-recommends prometheus"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Series Prometheus itself makes, not the service
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if os.environ.get("BILLING_SKIP_PROMTOOL") == "1":
        pytest.skip("BILLING_SKIP_PROMTOOL=1: the promtool checks are skipped")
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(f"promtool is not installed: `{INSTALL}` (then `service prometheus stop`), "
                    "or set BILLING_SKIP_PROMTOOL=1 to skip the promtool checks")
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_promtool_finds_the_rules_valid():
    checked = _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    tested = _promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_finds_the_prometheus_config_valid_with_its_rules():
    checked = _promtool("check", "config", "deploy/prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout


def test_every_dashboard_query_is_promql(tmp_path):
    """The dashboard's queries, as recording rules (Grafana's $__rate_interval as 5m), pass promtool's parser."""
    exprs = _dashboard_exprs()
    rules = [{"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, expr in enumerate(exprs)]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = _promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_rule_waits_names_a_severity_says_what_broke_and_has_tests_that_fire_and_stay_silent():
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in _rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert any(c["alertname"] == name and c["exp_alerts"] for c in cases), f"{name}: no case where it fires"
        assert any(c["alertname"] == name and not c["exp_alerts"] for c in cases), f"{name}: no case where it is silent"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, function calls and keywords are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    words = set(re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr))
    return words - {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def test_metric_names_are_read_out_of_promql():
    assert metric_names('sum by (le, route) (rate(billing_http_request_duration_seconds_bucket{a="b(c)"}[5m]))') == {
        "billing_http_request_duration_seconds_bucket"}
    assert metric_names("absent(up{job=\"x\"}) or max(billing_outbox_oldest_seconds) > 600") == {
        "up", "billing_outbox_oldest_seconds"}
    assert metric_names("sum(rate(a_total[$__rate_interval])) / sum without (instance) (b) > 0.05") == {"a_total", "b"}


def _exported(text_: str) -> set[str]:
    """Names a scrape declares (# TYPE, with a histogram's series) or has samples of."""
    names = {sample.split("{")[0] for sample in prometheus_samples(text_)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text_, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def _app(services: Services, broker_url: str | None) -> Api:
    port = MetricsPort(metrics.observe_request, lambda: metrics.render(lambda: metrics.gauges(services, broker_url)))
    return Api(testing.TestClient(create_app(services, OPERATOR_TOKEN, {}, metrics=port)))


def _services(engine) -> Services:
    return Services(Context(uow=lambda: UnitOfWork(engine, on_postings=metrics.observe_postings,
                                                    on_failed=metrics.observe_failed),
                            enqueue=lambda *_, **__: True, config=Config()))


def _scrape(api: Api) -> str:
    answer = api.call("GET", "/metrics")
    assert answer.status_code == 200, answer.text
    return answer.text


def test_every_metric_the_rules_and_the_dashboard_use_is_one_the_service_exports(engine):
    exported = _exported(_scrape(_app(_services(engine), REDIS_URL)))
    used = {name for rule in _rules() for name in metric_names(rule["expr"])}
    used |= {name for expr in _dashboard_exprs() for name in metric_names(expr)}
    assert {n for n in used if n.startswith("billing_")}, "no billing metric found in the rules and the dashboard"
    assert used - PROMETHEUS_OWN <= exported, f"not exported: {sorted(used - PROMETHEUS_OWN - exported)}"


def test_the_oldest_unfinished_operation_age_is_exported_and_falls_once_it_is_applied(engine):
    services = _services(engine)
    api = _app(services, None)
    user = api.new_user()
    ws = api.new_workspace(user)
    op = api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json={"amountCents": 5}).json
    with engine.begin() as conn:  # accepted a day ago: older than anything this run made
        conn.execute(text("UPDATE operations SET created_at = now() - interval '1 day' WHERE id = :id"),
                     {"id": op["id"]})
    try:
        assert prometheus_samples(_scrape(api))["billing_outbox_oldest_seconds"] >= 86400
    finally:
        services.operations.apply(op["id"])
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM operations WHERE id = :id"), {"id": op["id"]}).scalar()
    assert status == OperationStatus.SUCCEEDED
    assert prometheus_samples(_scrape(api))["billing_outbox_oldest_seconds"] < 86400


def test_an_operation_that_ends_failed_is_counted_once_committed_by_the_wired_unit_of_work(engine, database_url):
    built = container.build(settings.load({"DATABASE_URL": database_url}), enqueue=lambda *_, **__: True)
    api = _app(built, None)
    try:
        user = api.new_user()
        ws = api.new_workspace(user)
        failed = 'billing_operations_failed_total{kind="credit"}'
        before = prometheus_samples(_scrape(api)).get(failed, 0)
        op = api.operator("POST", f"/workspaces/{ws['id']}/billing/credits", json={"amountCents": 7}).json
        with built.ctx.uow() as uow:  # failed, then rolled back: nothing ended
            operations.set_status(uow.conn, op["id"], OperationStatus.FAILED, error={"title": "t", "detail": "d"})
        assert prometheus_samples(_scrape(api)).get(failed, 0) == before
        built.operations.fail(op["id"], "refused for the test")
        built.operations.fail(op["id"], "refused again: already finished")
        assert prometheus_samples(_scrape(api))[failed] == before + 1
    finally:
        for unit in (built.ctx.uow, built.ctx.read):  # the engines of writes and of reads
            with unit() as uow:
                built_engine = uow.conn.engine
            built_engine.dispose()


def test_the_database_and_broker_down_leave_the_scrape_up_with_dependency_gauges_at_zero():
    engine = make_engine("postgresql://postgres@127.0.0.1:1/none")
    try:
        text_ = _scrape(_app(_services(engine), "redis://127.0.0.1:1/0"))
    finally:
        engine.dispose()
    samples = prometheus_samples(text_)
    assert samples['billing_dependency_up{dependency="database"}'] == 0
    assert samples['billing_dependency_up{dependency="broker"}'] == 0
    assert "billing_http_requests_total" in text_ and "billing_outbox_oldest_seconds" not in text_


def test_with_the_database_and_redis_up_both_dependencies_are_up_and_the_oldest_pending_checkout_is_declared(engine):
    text_ = _scrape(_app(_services(engine), REDIS_URL))
    samples = prometheus_samples(text_)
    assert samples['billing_dependency_up{dependency="database"}'] == 1
    assert samples['billing_dependency_up{dependency="broker"}'] == 1
    assert "# TYPE billing_checkouts_oldest_pending_seconds gauge" in text_


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _mounts(service: dict) -> dict[str, str]:
    """container path -> repository path of a service's read-only bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith("./"):
            assert mode == ["ro"], f"{volume} is not read-only"
            found[target] = source[2:]
    return found


def test_prometheus_loads_the_alert_rules_mounted_beside_its_config():
    mounts = _mounts(_compose()["prometheus"])
    config_dir = "/etc/prometheus"
    config = yaml.safe_load((ROOT / mounts[f"{config_dir}/prometheus.yml"]).read_text())
    assert config["rule_files"], "prometheus.yml loads no rules"
    for rule_file in config["rule_files"]:
        assert (ROOT / mounts[f"{config_dir}/{rule_file}"]).resolve() == ALERTS.resolve()
    for job in config["scrape_configs"]:  # the alerts name the compose service of a target
        assert {"source_labels": ["__meta_dns_name"], "target_label": "service"} in job["relabel_configs"], job


def test_grafana_is_provisioned_read_only_from_deploy_and_reads_the_compose_prometheus():
    services = _compose()
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:") and grafana["ports"] == ["127.0.0.1:3000:3000"]
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"  # no admin/admin to guess
    mounts = _mounts(grafana)
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    [source] = datasources
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"]).groups()
    assert host == "prometheus" and f"{port}:{port}" in services["prometheus"]["ports"][0]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "billing.yml").read_text())["providers"]
    assert (ROOT / mounts[provider["options"]["path"]]).resolve() == DASHBOARD.parent.resolve()
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}
    assert environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_strangers_reach_the_api_only_through_the_proxy_that_reads_bodies_whole():
    services = _compose()
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:") and proxy["ports"] == ["8000:8000"]
    assert (ROOT / _mounts(proxy)["/etc/nginx/conf.d/default.conf"]).resolve() == (ROOT / "deploy/nginx.conf").resolve()
    assert "ports" not in services["api"] and services["api"]["expose"] == ["8000"]
    assert "server api:8000;" in (ROOT / "deploy/nginx.conf").read_text()
