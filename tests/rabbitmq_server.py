"""A private RabbitMQ node for flow and fault tests: its own AMQP and distribution ports, data, logs and
Erlang cookie, no plugins, so that a test may stop, freeze and restart it without touching the machine's.

A node takes seconds to boot, so a test session starts one (when a test asks for RabbitMQ) and each stack
takes a virtual host of its own on it: the same queue names, nothing shared. The virtual hosts are
created with the node, from a definitions file (a `rabbitmqctl add_vhost` costs a second of Erlang
start-up each).
"""
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from kombu import Connection

from tests.processes import Process, free_port
from worker.routing import dead_letter_queue

VHOSTS = 32  # more than the stacks of one session ask for
USER, PASSWORD = "billing", "billing"


def _program(name: str) -> str:
    """Debian's /usr/sbin wrappers switch to the rabbitmq user; the scripts behind them run as anyone."""
    behind = Path("/usr/lib/rabbitmq/bin") / name
    found = str(behind) if behind.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install rabbitmq-server (apt-get install rabbitmq-server)")
    return found


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitServer:
    def __init__(self, base_dir: Path) -> None:
        self.dir = base_dir
        self.port = free_port()
        self.node = f"billing-test-{self.port}@localhost"
        self._vhosts = [f"stack-{n}" for n in range(VHOSTS)]
        self._taken = 0
        self._write_files()
        self.env = dict(
            os.environ, HOME=str(self.dir),  # the Erlang cookie goes there, shared with rabbitmqctl
            RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()), RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),  # not the machine's node name
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
        self.process: Process | None = None
        self.start()

    def _write_files(self) -> None:
        definitions = {
            "users": [{"name": USER, "password_hash": _password_hash(PASSWORD), "tags": "administrator",
                       "hashing_algorithm": "rabbit_password_hashing_sha256"}],
            "vhosts": [{"name": v} for v in self._vhosts],
            "permissions": [{"user": USER, "vhost": v, "configure": ".*", "write": ".*", "read": ".*"}
                            for v in self._vhosts],
        }
        (self.dir / "definitions.json").write_text(json.dumps(definitions))
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"load_definitions = {self.dir / 'definitions.json'}\n"
            "log.console = true\nlog.console.level = error\nlog.file = node.log\nlog.file.level = info\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")

    def start(self) -> None:
        self.process = Process("rabbitmq", [_program("rabbitmq-server")], self.env, self.dir)
        try:
            self.process.wait_for_output("completed with 0 plugins", timeout=180)
        except BaseException:
            self.process.kill()
            raise

    def stop(self) -> None:
        """SIGKILL: the node dies as in a crash; what it confirmed is in its quorum queues' log on disk."""
        self.process.kill()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung broker)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process.popen.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def running(self) -> bool:
        return self.process.popen.poll() is None

    def vhost(self) -> "RabbitBroker":
        name, self._taken = self._vhosts[self._taken], self._taken + 1
        return RabbitBroker(self, name)

    def ctl(self, *args: str) -> str:
        return subprocess.run([_program("rabbitmqctl"), "-n", self.node, "-q", *args], env=self.env,
                              capture_output=True, text=True, timeout=60, check=True).stdout

    def remove(self) -> None:
        self.thaw()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitBroker:
    """A stack's broker: one virtual host of the session's node. Stopping or freezing it does so to the
    node, which only one stack at a time uses (fault tests run one by one)."""

    name = "rabbitmq"

    def __init__(self, server: RabbitServer, vhost: str) -> None:
        self.server, self.vhost = server, vhost
        self.url = f"amqp://{USER}:{PASSWORD}@127.0.0.1:{server.port}/{vhost}"

    @property
    def process(self) -> Process:
        return self.server.process

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def freeze(self) -> None:
        self.server.freeze()

    def thaw(self) -> None:
        self.server.thaw()

    def ready(self, queue: str) -> int:
        """Messages waiting in the queue (delivered and unacknowledged ones not counted)."""
        with Connection(self.url, connect_timeout=5) as conn:
            return conn.default_channel.queue_declare(queue, passive=True).message_count

    def dead_letters(self, queue: str) -> list[str]:
        """The task ids of the messages in the queue's dead-letter queue (read, and left there)."""
        with Connection(self.url, connect_timeout=5) as conn:
            channel, ids = conn.channel(), []
            while (message := channel.basic_get(dead_letter_queue(queue))) is not None:
                ids.append(message.headers["id"])
            return ids  # unacknowledged: closing the channel puts them back

    def unacknowledged(self) -> int:
        """Messages delivered to a consumer and not acknowledged yet, in every queue of the virtual host."""
        rows = self.server.ctl("list_queues", "-p", self.vhost, "--no-table-headers", "messages_unacknowledged")
        return sum(int(n) for n in rows.split())

    def release(self) -> None:
        """The node stays for the next stack, running."""
        self.server.thaw()
        if not self.server.running():
            self.server.start()
