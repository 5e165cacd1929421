"""The API's Prometheus multiprocess directory: the live gauges of a worker process that is gone are forgotten as
the next worker starts (granian respawns a worker that died; its last values must not be reported forever)."""
import os
import subprocess
import sys

from worker import metrics


def test_a_dead_workers_live_gauges_are_forgotten_and_a_living_ones_kept(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead, alive = int(gone.stdout), os.getpid()
    for pid in (dead, alive):
        for name in (f"gauge_livemax_{pid}.db", f"gauge_livesum_{pid}.db", f"counter_{pid}.db"):
            (tmp_path / name).write_bytes(b"")
    metrics.forget_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        f"counter_{dead}.db",  # a dead process's counts still add up in the totals
        f"counter_{alive}.db", f"gauge_livemax_{alive}.db", f"gauge_livesum_{alive}.db"])
