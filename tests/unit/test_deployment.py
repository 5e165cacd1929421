"""The compose file and the CLI agree; the layers import only downwards."""
import ast
from pathlib import Path

import yaml

from worker.cli import parser

ROOT = Path(__file__).resolve().parents[2]


def _subcommands() -> set[str]:
    action = next(a for a in parser()._actions if a.dest == "command")
    return set(action.choices)


def test_every_compose_service_of_ours_runs_an_existing_billing_subcommand():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("billing")}
    assert {"migrate", "api", "worker", "beat", "flower"} <= set(ours)
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
            if bad:
                broken.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert broken == []
