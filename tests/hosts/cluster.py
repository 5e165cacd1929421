"""The service spread over hosts: PostgreSQL and Redis on `db`, the API and beat on `api`, a Celery worker on
each worker host; every host a network namespace of tests.hosts.network, this process the client."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import requests

from tests.factories import OPERATOR_TOKEN, Api
from tests.hosts.network import Host, Network
from tests.postgres_server import PostgresServer
from tests.processes import HttpClient, Process, wait_until
from worker import settings
from worker.celery_app import create_celery
from worker.processes import ALL_QUEUES, api_argv, beat_argv, worker_argv

API_PORT = 8000
REDIS_PORT = 6379


class Cluster:
    """Started by start(), stopped (every process killed, every namespace deleted) by stop(), which is safe
    to call at any point, twice included."""

    def __init__(self, template: Path, log_dir: Path, workers: int = 2, env: dict | None = None) -> None:
        self.log_dir = log_dir
        self.worker_names = [f"w{n}" for n in range(1, workers + 1)]
        self.network: Network | None = None
        self.postgres: PostgresServer | None = None
        self.processes: dict[str, Process] = {}
        self._template, self._extra_env = template, env or {}
        self.api: Api | None = None
        self._celery = None

    def host(self, name: str) -> Host:
        return self.network.hosts[name]

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def env(self) -> dict:
        """The service's environment on every host."""
        db = self.host("db").address
        return dict(os.environ, DATABASE_URL=self.database_url, REDIS_URL=f"redis://{db}:{REDIS_PORT}/0",
                    CELERY_BROKER_URL=f"redis://{db}:{REDIS_PORT}/0", BILLING_OPERATOR_TOKEN=OPERATOR_TOKEN,
                    PYTHONUNBUFFERED="1", WORKER_METRICS_PORT="0", **self._extra_env)

    def start(self, *, api_workers: int = 1, api_threads: int = 8, concurrency: int = 2,
              workers: list[str] | None = None) -> "Cluster":
        """Every host and process, `workers` of the worker hosts with a worker (default: all), once they serve."""
        workers = self.worker_names if workers is None else workers
        self.network = Network.create(["db", "api", *self.worker_names])
        db, api = self.host("db"), self.host("api")
        self.postgres = PostgresServer(self._template, self.log_dir, host=db.address, run=db.run)
        self._start("redis", db, ["redis-server", "--bind", db.address, "--port", str(REDIS_PORT), "--save", "",
                                  "--appendonly", "no", "--protected-mode", "no"])
        self.processes["redis"].wait_for_output("Ready to accept connections", timeout=10)
        self._start("api", api, api_argv(API_PORT, workers=api_workers, threads=api_threads, host=api.address))
        self._start("beat", api, beat_argv(str(self.log_dir)))
        for name in workers:
            self.start_worker(name, concurrency, wait=False)
        self.api = Api(HttpClient(f"http://{api.address}:{API_PORT}"))
        wait_until(lambda: self._answers() or self._exited("api"), 60, "the API")
        for name in ["beat", *workers]:
            self.processes[name].wait_for_output("beat: Starting" if name == "beat" else " ready.", timeout=60)
        return self

    def start_worker(self, name: str, concurrency: int = 2, wait: bool = True, env: dict | None = None) -> Process:
        """A Celery worker on the host of that name (w1, w2, ...), named <name>@<this machine's hostname>."""
        process = self._start(name, self.host(name), worker_argv(ALL_QUEUES, concurrency, name=f"{name}@%h"), env)
        if wait:
            process.wait_for_output(" ready.", timeout=60)
        return process

    def stop_worker(self, name: str) -> None:
        """SIGTERM (a warm shutdown: what it prefetched goes back to the queue), then SIGKILL what is left."""
        self.processes.pop(name).stop(timeout=30)

    def node(self, name: str) -> str:
        """The worker's Celery node name."""
        return f"{name}@{socket.gethostname()}"

    @property
    def celery(self):
        """A Celery app on the cluster's broker, from this machine: control commands, inspect."""
        if self._celery is None:
            self._celery = create_celery(settings.load(self.env))
        return self._celery

    def idle(self, name: str) -> bool:
        """The worker answers over the broker, and runs, holds and schedules no task."""
        node = self.node(name)
        inspect = self.celery.control.inspect(destination=[node], timeout=1)
        return all((reply or {}).get(node) == [] for reply in (inspect.active(), inspect.reserved(),
                                                               inspect.scheduled()))

    def _start(self, name: str, host: Host, argv: list[str], env: dict | None = None) -> Process:
        self.processes[name] = Process(name, host.run(argv), self.env | (env or {}), self.log_dir)
        return self.processes[name]

    def _answers(self) -> bool:
        try:
            return requests.get(f"http://{self.host('api').address}:{API_PORT}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _exited(self, name: str) -> bool:
        process = self.processes[name]
        if process.popen.poll() is not None:
            raise AssertionError(f"{name} exited with {process.popen.returncode}:\n{process.output()[-3000:]}")
        return False

    def billing(self, *args: str) -> subprocess.CompletedProcess:
        """An operator command run from this machine (the root namespace), as an operator would."""
        return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])

    def logs(self, lines: int = 80) -> str:
        processes = [*self.processes.values(), *([self.postgres.process] if self.postgres else [])]
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n" + "\n".join(p.output().splitlines()[-lines:])
                         for p in processes if p is not None)

    def stop(self) -> None:
        if self._celery is not None:
            self._celery.close()
            self._celery = None
        for process in self.processes.values():
            process.kill()
        self.processes.clear()
        if self.postgres is not None:
            self.postgres.remove()
            self.postgres = None
        if self.network is not None:
            self.network.remove()
            self.network = None
