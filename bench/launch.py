"""What every extensionless bench/<name> runs: bench/<name>.py's main(), under the project's venv (stdlib only)."""
import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def launch(script: str) -> int:
    """Re-execute the script under .venv/bin/python once, when not there yet; then bench.<its name>.main().
    sys.argv[0] stays the script, so the harness names the logs after it."""
    path, python = Path(script).resolve(), VENV / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != VENV.resolve() and not os.environ.get("BENCH_NO_REEXEC"):
        os.environ["BENCH_NO_REEXEC"] = "1"
        os.execv(str(python), [str(python), str(path), *sys.argv[1:]])
    return importlib.import_module(f"bench.{path.name}").main()
