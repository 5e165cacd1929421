"""A private PostgreSQL server for fault tests: its own cluster on a free port, to stop and restart at will
(and a streaming replica of one, StandbyServer).

initdb and the migrations run once per session into a template cluster; each server starts on a copy
of it (`cp -a` of a cleanly stopped cluster), so a fresh migrated database costs about a second.

fsync=off: the tests kill PostgreSQL's processes, never the machine, so what a committed transaction
wrote is in the kernel's page cache and survives any crash they provoke; crash recovery replays the
WAL as it would after a power-safe crash. synchronous_commit stays on: a commit still waits for its
WAL write before it answers.
"""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.processes import Process, free_port, wait_until
from worker.processes import migrate

DATABASE = "billing"
SETTINGS = {"listen_addresses": "127.0.0.1", "unix_socket_directories": "", "fsync": "off",
            "max_connections": "200", "shared_buffers": "64MB", "log_min_messages": "warning"}


def _bin(name: str) -> str:
    """A PostgreSQL program: from PG_BIN, the PATH, or the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("PG_BIN"):
        return str(Path(os.environ["PG_BIN"]) / name)
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError(f"{name} not found: set PG_BIN to PostgreSQL's bin directory")
    return str(versions[-1] / name)


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: then it runs as the `postgres` user."""
    return "postgres" if os.geteuid() == 0 else None


def _own(path: Path) -> None:
    user = _server_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _scratch_dir(prefix: str) -> Path:
    """A directory the server's user may write (pytest's tmp dirs are private to the test's user)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _own(path)
    return path


class PostgresServer:
    """A cluster copied from the template, served on a free port: stop() and start() keep its data,
    remove() deletes it. On another host (`host` its address, `run(argv, user)` the command line that runs
    argv there as user: tests.hosts.network.Host.run) it listens on that address alone."""

    def __init__(self, template: Path, log_dir: Path, host: str = "127.0.0.1", run=None) -> None:
        self.port = free_port()
        self.host, self._run = host, run
        self.url = f"postgresql://postgres@{host}:{self.port}/{DATABASE}"
        self._root = _scratch_dir("billing-pg-")
        self.data_dir = self._root / "data"
        subprocess.run(["cp", "-a", str(template), str(self.data_dir)], check=True)
        if host != "127.0.0.1":  # its peers are the hosts of its own subnet
            with open(self.data_dir / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        self._log_dir = log_dir
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        argv = [_bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port), "-c", f"listen_addresses={self.host}"]
        if self._run is None:
            self.process = Process("postgres", argv, dict(os.environ), self._log_dir, user=_server_user())
        else:
            self.process = Process("postgres", self._run(argv, _server_user()), dict(os.environ), self._log_dir)
        self.process.wait_for_output("database system is ready to accept connections", timeout=30)

    def stop(self, mode: str = "immediate") -> None:
        """Shut down: `immediate` (SIGQUIT) is a crash, sessions cut and the WAL replayed at the next
        start; `fast` (SIGINT) rolls sessions back and checkpoints."""
        if self.process is None or self.process.popen.poll() is not None:
            return
        self.process.popen.send_signal({"immediate": signal.SIGQUIT, "fast": signal.SIGINT}[mode])
        try:
            self.process.popen.wait(timeout=30)
        finally:
            self.process.kill()  # whatever of the group is left

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self._root, ignore_errors=True)


class StandbyServer(PostgresServer):
    """A streaming replica of `primary`: pg_basebackup -R of its cluster, served read-only on a free port."""

    def __init__(self, primary: PostgresServer, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"
        self._root = _scratch_dir("billing-pg-standby-")
        self.data_dir = self._root / "data"
        subprocess.run([_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                        "-D", str(self.data_dir), "-R", "-X", "stream", "--no-sync"],
                       check=True, capture_output=True, user=_server_user())
        self._log_dir = log_dir
        self.process = None
        self.start()

    def start(self) -> None:
        argv = [_bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        self.process = Process("postgres-standby", argv, dict(os.environ), self._log_dir, user=_server_user())
        self.process.wait_for_output("database system is ready to accept read-only connections", timeout=30)


def build_template(log_dir: Path) -> Path:
    """initdb, create and migrate the database, stop cleanly: a cluster to copy. Remove it with remove_template."""
    root = _scratch_dir("billing-pg-template-")
    data_dir = root / "data"
    user = _server_user()
    subprocess.run([_bin("initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                    "--locale=C", "--no-sync", "--no-instructions"],
                   check=True, capture_output=True, user=user)
    with open(data_dir / "postgresql.auto.conf", "a") as conf:
        conf.writelines(f"{name} = '{value}'\n" for name, value in SETTINGS.items())
    port = free_port()
    process = Process("postgres-template", [_bin("postgres"), "-D", str(data_dir), "-p", str(port)],
                      dict(os.environ), log_dir, user=user)
    try:
        process.wait_for_output("database system is ready to accept connections", timeout=30)
        subprocess.run([_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE],
                       check=True, capture_output=True)
        migrate(f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}")
    finally:
        process.popen.send_signal(signal.SIGINT)  # fast: a clean shutdown, so copies start without recovery
        process.popen.wait(timeout=30)
        process.kill()
    wait_until(lambda: not (data_dir / "postmaster.pid").exists(), 10, "the template cluster to stop")
    return data_dir


def remove_template(data_dir: Path) -> None:
    shutil.rmtree(data_dir.parent, ignore_errors=True)
