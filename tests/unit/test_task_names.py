"""Task names are given once (domain.names.Task): each is registered by the Celery app, beat schedules
only those, and no module spells one out."""
import ast
import importlib
from pathlib import Path

from beat_schedule import SCHEDULE
from domain.names import Task
from worker.celery_app import TASK_MODULES, app

ROOT = Path(__file__).resolve().parents[2]


def test_every_task_name_is_registered_by_the_celery_app():
    for module in TASK_MODULES:
        importlib.import_module(module)
    registered = {name for name in app.tasks if not name.startswith("celery.")}
    assert registered == {task.value for task in Task}


def test_beat_schedules_only_named_tasks():
    assert {entry["task"] for entry in SCHEDULE.values()} <= set(Task)
    assert all(isinstance(entry["task"], Task) for entry in SCHEDULE.values())


def test_no_module_spells_a_task_name_out():
    names = {task.value for task in Task}
    spelled = []
    for path in [*ROOT.glob("api/**/*.py"), *ROOT.glob("domain/**/*.py"), *ROOT.glob("tasks/**/*.py"),
                 *ROOT.glob("worker/**/*.py"), ROOT / "beat_schedule.py"]:
        if path == ROOT / "domain" / "names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert spelled == []
