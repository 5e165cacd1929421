"""Real processes for flow and fault tests: a private broker (redis-server, or a virtual host of a private
RabbitMQ node: tests/rabbitmq_server.py), the API (granian), a Celery worker and beat."""
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import redis
import requests
from sqlalchemy import text

from domain.models import OPERATOR_CALLER
from domain.services.registry import Services
from tests.factories import OPERATOR_TOKEN, Api
from worker import settings
from worker.celery_app import create_celery
from worker.processes import ALL_QUEUES, api_argv, beat_argv, worker_argv
from worker.routing import dead_letter_queue, queue_of

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """The predicate's first truthy value, polled until the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Process:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, log_dir: Path, user: str | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, user=user)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, needle: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()[-3000:]}")
            return needle in self.output()
        wait_until(seen, timeout, f"{needle!r} from {self.name}")

    def group(self) -> list[int]:
        """Live pids of the group: the process and every descendant (pool children included)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.pid and fields[0] != "Z":  # pgid, state
                    found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """SIGKILL the whole group and wait until no member runs (their sockets are closed)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        wait_until(lambda: not self.group(), 10, f"{self.name}'s group to die")

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL whatever of the group is left."""
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


class RedisServer:
    """A private redis-server on a free port, without persistence: a restart loses what it held."""

    name = "redis"

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log_dir = log_dir
        self.process: Process | None = None
        self.start()

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no"]
        self.process = Process("redis", argv, dict(os.environ), self._log_dir)
        self.process.wait_for_output("Ready to accept connections", timeout=10)

    def stop(self) -> None:
        """SIGKILL: the broker vanishes with everything it held."""
        self.process.kill()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung broker)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process.popen.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def ready(self, queue: str) -> int:
        """Messages waiting in the queue."""
        return self._client(lambda client: client.llen(queue))

    def unacknowledged(self) -> int:
        """Messages delivered to a worker and not acknowledged yet."""
        return self._client(lambda client: client.hlen("unacked"))

    def dead_letters(self, queue: str) -> list[str]:
        """The task ids of the messages in the queue's dead-letter queue."""
        raw = self._client(lambda client: client.lrange(dead_letter_queue(queue), 0, -1))
        return [json.loads(message)["headers"]["id"] for message in raw]

    def _client(self, use):
        client = redis.Redis.from_url(self.url)
        try:
            return use(client)
        finally:
            client.close()

    def release(self) -> None:
        self.thaw()
        self.stop()


class HttpClient:
    """Falcon's TestClient.simulate_request over real HTTP, so tests.factories.Api drives a served app."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def simulate_request(self, method: str, path: str, *, json=None, body=None, headers=None,
                         params=None) -> "HttpResult":
        return HttpResult(requests.request(method, self.base_url + path, json=json, data=body,
                                           headers=headers, params=params, timeout=30))


class HttpResult:
    def __init__(self, response: requests.Response) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self.text = response.text
        self.elapsed = response.elapsed.total_seconds()
        is_json = "json" in response.headers.get("Content-Type", "")
        self.json = response.json() if response.content and is_json else None


@dataclasses.dataclass(frozen=True)
class Answer:
    n: int  # the n-th request of the load
    sent_at: float  # time.monotonic()
    answered_at: float
    result: HttpResult | None
    error: str | None  # no HTTP answer at all (connection refused, timed out)


class Load:
    """`send(n)` for n = 0, 1, 2... from a few threads, until the `with` block ends: steady traffic
    through a fault, every answer kept with when it was sent."""

    def __init__(self, send: Callable[[int], HttpResult], threads: int = 2, pause: float = 0.05) -> None:
        self._send, self._pause = send, pause
        self._answers: list[Answer] = []
        self._issued = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                n, self._issued = self._issued, self._issued + 1
            sent_at = time.monotonic()
            try:
                result, error = self._send(n), None
            except requests.RequestException as exc:
                result, error = None, f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._answers.append(Answer(n, sent_at, time.monotonic(), result, error))
            self._stopping.wait(self._pause)

    def answers(self) -> list[Answer]:
        with self._lock:
            return sorted(self._answers, key=lambda a: a.n)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)


X402_PAY_TO = "0x1563915e194D8CfBA1943570603F7606A3115508"
X402_NETWORK = "eip155:84532"


@contextmanager
def x402_stack(database_url: str, log_dir: Path, facilitator):
    """API and worker configured for x402 against the loopback facilitator stand-in, started; stopped after."""
    stack = Stack(database_url, log_dir)
    stack.env.update(X402_FACILITATOR_URL=facilitator.url, X402_PAY_TO=X402_PAY_TO, X402_NETWORK=X402_NETWORK)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


# For tests that hold rows locked on purpose to catch a worker mid-transaction: workers wait on the lock
# (as on any long transaction) instead of giving the attempt back after BILLING_DB_LOCK_TIMEOUT_MS.
WAIT_ON_LOCKS = {"BILLING_DB_LOCK_TIMEOUT_MS": "120000"}


class Stack:
    """The service as deployed, on a database (with its server, when private) and a private broker: API,
    worker, beat. The broker is a private Redis (also the rate limiter's store) unless one is given: a
    tests.rabbitmq_server.RabbitBroker, without Redis (the rate limiter then counts in memory)."""

    def __init__(self, database_url: str, log_dir: Path, postgres=None, broker=None) -> None:
        self.log_dir = log_dir
        self.postgres = postgres  # a tests.postgres_server.PostgresServer, whose log joins the others
        self.broker = broker or RedisServer(log_dir)
        redis_url = {"REDIS_URL": self.broker.url} if self.broker.name == "redis" else {}
        self.env = dict({k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")},
                        DATABASE_URL=database_url, CELERY_BROKER_URL=self.broker.url,
                        BILLING_OPERATOR_TOKEN=OPERATOR_TOKEN, PYTHONUNBUFFERED="1", **redis_url)
        self.processes: list[Process] = []
        self.api: Api | None = None
        self.worker: Process | None = None
        self._celery = None

    def _start(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.env, self.log_dir)
        self.processes.append(process)
        return process

    def start(self, *, api: bool = True, worker: bool = True, concurrency: int = 2, queues: str = ALL_QUEUES) -> None:
        """Launch the API (granian) and a worker (of `queues`) together, then wait until both serve."""
        if api:
            port = free_port()
            server = self._start("api", api_argv(port, workers=1, threads=8))
            self.api = Api(HttpClient(f"http://127.0.0.1:{port}"))
        if worker:
            name = f"test{free_port()}@%h"
            self.worker = self._start("worker", worker_argv(queues, concurrency, name=name))
        if api:
            wait_until(lambda: server.popen.poll() is not None or self._answers(port), 60, "the API")
            assert server.popen.poll() is None, server.output()
        if worker:
            self.worker.wait_for_output(" ready.", timeout=60)

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def start_beat(self, wait: bool = True) -> Process:
        """Launch beat, its schedule file in the log directory; with wait, until it runs."""
        beat = self._start("beat", beat_argv(str(self.log_dir)))
        if wait:
            beat.wait_for_output("beat: Starting", timeout=60)
        return beat

    def billing(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run an operator command (`billing relay`, `billing audit`) against this stack."""
        return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=self.env | (env or {}),
                              capture_output=True, text=True, timeout=60)

    def send_task(self, name: str, *, countdown: float | None = None, **kwargs) -> str:
        """Publish a task message straight to this stack's broker, as a redelivery (or, with a countdown, a
        retry) would; its id."""
        if self._celery is None:
            self._celery = create_celery(settings.load(self.env))
        return self._celery.send_task(name, kwargs=kwargs, queue=queue_of(name), countdown=countdown).id

    def enqueue(self, task_name: str, **kwargs) -> bool:
        """An Enqueue on this stack's broker, for services built in the test process."""
        try:
            self.send_task(task_name, **kwargs)
            return True
        except Exception:  # as worker.queue.enqueue: a refused send is the relay's job
            return False

    def services(self, services: Services) -> Services:
        """The test's services, sending their tasks to this stack's worker."""
        return Services(dataclasses.replace(services.ctx, enqueue=self.enqueue))

    def logs(self, lines: int = 60) -> str:
        """The tail of every process's output, for the report of a failed test."""
        servers = [self.broker.process, *([self.postgres.process] if self.postgres else [])]
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n" + "\n".join(p.output().splitlines()[-lines:])
                         for p in [*self.processes, *servers])

    def stop(self) -> None:
        """SIGKILL everything: what a test needed from a graceful stop it asked for itself, and
        nothing the service does may depend on one."""
        if self._celery is not None:
            self._celery.close()
        for process in self.processes:
            process.kill()
        self.broker.release()


# Database checks shared by flow and fault tests.

def statuses(engine, operation_ids: list[str]) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, status FROM operations WHERE id = ANY(:ids)"),
                                 {"ids": operation_ids}).all())


def wait_for_operations(engine, operation_ids: list[str], timeout: float = 60) -> dict[str, str]:
    """Poll until every operation is finished; their statuses by id."""
    def finished():
        found = statuses(engine, operation_ids)
        return found if all(found.get(i) in ("succeeded", "failed") for i in operation_ids) else None
    return wait_until(finished, timeout, f"{len(operation_ids)} operation(s) to finish", every=0.2)


def entries_per_operation(engine, operation_ids: list[str]) -> dict[str, int]:
    """How many ledger entries each operation posted (keyed op:<id>)."""
    with engine.connect() as conn:
        counts = dict(conn.execute(text(
            "SELECT reference, count(*) FROM ledger_entries WHERE idempotency_key = ANY(:keys) "
            "GROUP BY reference"),
            {"keys": [f"op:{i}" for i in operation_ids]}).all())
    return {i: counts.get(i, 0) for i in operation_ids}


def age_operations(engine, operation_ids: list[str], seconds: int = 120) -> None:
    """Make unfinished operations look abandoned for `seconds`, as after a long outage."""
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE operations SET updated_at = updated_at - make_interval(secs => :s), "
            "enqueued_at = enqueued_at - make_interval(secs => :s) "
            "WHERE id = ANY(:ids) AND status IN ('queued', 'running')"), {"ids": operation_ids, "s": seconds})


@contextmanager
def account_locked(engine, account_id: str):
    """Hold the account's row lock: a worker posting to it blocks inside its transaction."""
    with engine.connect() as conn:
        with conn.begin():
            conn.execute(text("SELECT 1 FROM billing_accounts WHERE id = :id FOR UPDATE"), {"id": account_id})
            yield


def backends_waiting_on_locks(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")).scalars())


def credit(services, workspace: dict, cents: int) -> str:
    """An operator's credit, recorded by the services (and sent to their queue); its operation id."""
    return services.operations.request_credit(OPERATOR_CALLER, workspace["id"], cents, "").id


def two_pool_processes_and_workspaces(stack: Stack, api, count: int) -> tuple[list, list[dict]]:
    """A worker of two pool processes that wait on a locked row (WAIT_ON_LOCKS), and `count` owners with a
    workspace each, set up in process: (owners, workspaces)."""
    stack.env.update(WAIT_ON_LOCKS)
    stack.start(api=False, concurrency=2)
    owners = [api.new_user() for _ in range(count)]
    return owners, [api.new_workspace(owner) for owner in owners]


def credits_until_both_pool_processes_block(stack: Stack, services, engine, workspaces: list[dict]) -> list[str]:
    """With the first workspace's account locked (account_locked): 30 credits in turn to the workspaces, until
    both pool processes wait inside a transaction on the locked account, after applying what came before for
    the others. The credits' operation ids."""
    ids = [credit(stack.services(services), workspaces[i % len(workspaces)], 100 + i) for i in range(30)]
    wait_until(lambda: len(backends_waiting_on_locks(engine)) == 2, 30, "both pool processes to block")
    return ids


def blocked_mid_transaction(engine, operation_id: str) -> set[int]:
    """Wait until a worker runs the operation and waits on a lock; the waiting backends' pids."""
    return wait_until(lambda: statuses(engine, [operation_id]) == {operation_id: "running"}
                      and backends_waiting_on_locks(engine), 30, f"{operation_id} to block on a lock")


def assert_applied_once(engine, operation_ids: list[str]) -> None:
    """Every operation succeeded, with exactly one ledger entry (only the exceptions are shown)."""
    found = statuses(engine, operation_ids)
    assert {i: found.get(i) for i in operation_ids if found.get(i) != "succeeded"} == {}
    assert {i: n for i, n in entries_per_operation(engine, operation_ids).items() if n != 1} == {}


def assert_audit_passes(stack: Stack) -> None:
    """`billing audit`, as an operator runs it, finds nothing: balances equal their entries, chains are
    intact, and no operation is unfinished (after the test's waits, one second is already too long)."""
    audit = stack.billing("audit", "--stuck-after", "1")
    assert (audit.returncode, audit.stdout.splitlines()[-1:]) == (0, ["audit: ok"]), audit.stdout + audit.stderr


def assert_sound(services, *ids: str) -> None:
    """The audit finds nothing wrong with these accounts or operations."""
    problems = services.audit.problems()
    assert [p for p in problems if any(i in p for i in ids)] == [], problems
