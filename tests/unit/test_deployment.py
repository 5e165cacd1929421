"""The compose file and the CLI agree; the layers import only downwards."""
import ast
import re
from pathlib import Path

import yaml

from tasks import RETRY
from worker.cli import parser
from worker.processes import API_GRACEFUL_SECONDS
from worker.routing import QUEUES

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


def _modules() -> dict[str, Path]:
    """Every module of ours, by dotted name."""
    found = {"beat_schedule": ROOT / "beat_schedule.py"}
    for package in ("api", "domain", "tasks", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _import_statements(module: str, path: Path) -> list[tuple[ast.stmt, set[str]]]:
    """Each import statement of the module, in functions too, with the dotted names it may load."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.append((node, {alias.name for alias in node.names}))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            found.append((node, {base} | {f"{base}.{alias.name}" for alias in node.names}))
    return found


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, a relative one resolved against the importing module."""
    if not node.level:
        return node.module
    parts = module.split(".")[:None if path.name == "__init__.py" else -1]
    parts = parts[:len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: {name for _, names in _import_statements(module, path) for name in names
                     if name in modules and name != module} for module, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, as the modules along it back to the first, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        path.append(module)
        for target in sorted(graph[module]):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done and (cycle := visit(target)):
                return cycle
        done.add(path.pop())
        return None

    return next((cycle for module in sorted(graph) if module not in done and (cycle := visit(module))), None)


def test_the_cycle_finder_finds_a_cycle_and_names_it():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_of_ours_imports_one_that_imports_it_back_even_inside_a_function():
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _importing(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{node.lineno} imports {min(names)}"
            for module, path in _modules().items() if _within(module, packages)
            for node, names in _import_statements(module, path) if any(_within(n, forbidden) for n in names)]


def test_the_api_and_the_tasks_reach_the_database_only_through_services():
    assert _importing(("api", "tasks"), ("sqlalchemy", "psycopg", "domain.store")) == []


SQL_CALLS = {"execute", "exec_driver_sql", "scalar", "scalar_one", "scalars", "driver_connection"}


def test_services_run_no_sql_and_import_no_sqlalchemy():
    calls = [f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}"
             for path in (ROOT / "domain" / "services").rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr in SQL_CALLS]
    assert _importing(("domain.services",), ("sqlalchemy", "psycopg")) + calls == []


def _explained(lines: list[str], lineno: int) -> bool:
    """The import's line, or the nearest line above it that is neither an import nor blank, has a comment."""
    above = [line.strip() for line in lines[:lineno]]
    while above and "#" not in above[-1] and (not above[-1] or above[-1].startswith(("import ", "from "))):
        above.pop()
    return bool(above) and "#" in above[-1]


def test_an_import_of_ours_inside_a_function_says_why_it_waits():
    modules, broken = _modules(), []
    for module, path in modules.items():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                broken += [f"{path.relative_to(ROOT)}:{node.lineno}" for node, names in _import_statements(module, path)
                           if function.lineno < node.lineno <= function.end_lineno and names & modules.keys()
                           and not _explained(lines, node.lineno)]
    assert broken == []
