"""The compose file and the CLI agree; the layers import only downwards."""
import ast
import re
from pathlib import Path

import yaml

from tasks import RETRY
from worker.celery_app import QUEUES
from worker.cli import API_GRACEFUL_SECONDS, parser

ROOT = Path(__file__).resolve().parents[2]


def _subcommands() -> set[str]:
    action = next(a for a in parser()._actions if a.dest == "command")
    return set(action.choices)


def test_every_compose_service_of_ours_runs_an_existing_billing_subcommand():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("billing")}
    assert {"migrate", "api", "worker-ledger", "worker-jobs", "beat", "flower"} <= set(ours)
    for name, service in ours.items():
        command = service["command"]
        assert command[0] == "billing" and command[1] in _subcommands(), name
        parser().parse_args(command[1:])


def test_the_stack_has_healthy_dependencies_and_exactly_one_beat():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "noeviction" in services["redis"]["command"]


def _services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _workers(services: dict) -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in services.items() if svc.get("command", [None, None])[1] == "worker"}


def test_workers_split_the_queues_by_purpose_and_together_consume_every_queue():
    consumed = {name: set(command[command.index("--queues") + 1].split(","))
                for name, command in _workers(_services()).items()}
    assert consumed["worker-ledger"] == {"ledger"}
    assert sorted(q for queues in consumed.values() for q in queues) == sorted(QUEUES)


def _port(service: dict, default: str) -> int:
    command = service["command"]
    flag = "--port" if "--port" in command else None
    return int(command[command.index(flag) + 1] if flag else service["environment"].get("WORKER_METRICS_PORT", default))


def test_prometheus_scrapes_the_metrics_port_of_the_api_and_of_every_worker_service():
    services = _services()
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    mounted = next(v.split(":")[0] for v in prometheus["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mounted).read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for sd in job.get("dns_sd_configs", []):
            scraped |= {(name, sd["port"]) for name in sd["names"]}
        for static in job.get("static_configs", []):
            scraped |= {(t.split(":")[0], int(t.split(":")[1])) for t in static["targets"]}
    for name, port in scraped:
        assert name in services, f"prometheus scrapes {name}, which is no compose service"
        assert _port(services[name], "9808") == port, name
    assert {name for name, _ in scraped} == {"api", *_workers(services)}


def _seconds(duration: str) -> int:
    return sum(int(n) * {"s": 1, "m": 60, "h": 3600}[unit] for n, unit in re.findall(r"(\d+)([smh])", duration))


def test_docker_stop_waits_longer_than_the_api_drain_and_the_longest_task():
    services = _services()
    assert _seconds(services["api"]["stop_grace_period"]) > API_GRACEFUL_SECONDS
    for name in _workers(services):
        assert _seconds(services[name]["stop_grace_period"]) > RETRY["time_limit"], name


def test_flower_is_guarded_and_persists_nothing():
    flower = _services()["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"] and flower["ports"][0].startswith("127.0.0.1:")
    assert "--state-dir" not in flower["command"] and "volumes" not in flower


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


FORBIDDEN = {
    "domain": {"falcon", "celery", "kombu", "api", "tasks", "worker", "os"},
    "api": {"celery", "kombu", "tasks", "worker"},
    "tasks": {"api", "falcon"},
    "worker": {"api", "tasks", "falcon"},
}


def test_layers_import_only_downwards():
    broken = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = _imports(path) & forbidden
            if package == "api" and path.name == "app.py":
                bad -= {"worker"}  # get_app() is the composition entry point for the WSGI server
            if package == "worker" and path.name == "cli.py":
                bad -= {"api", "falcon"}  # `billing credit` sends its request to the API's app in process
            if bad:
                broken.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert broken == []
