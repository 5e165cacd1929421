"""The API's HTTP server: granian (HTTP parsed and connections kept in Rust, the app on Python threads).

`python -m worker.http_server --port 8000 ...` is what `billing api` runs. Around granian it keeps what the
service needs of its server: one Prometheus multiprocess directory shared by the worker processes (made
before they start, removed at exit; a respawned worker's dead predecessor forgotten); on SIGTERM the graceful
drain (no new connections, the requests in flight finish, for at most API_GRACEFUL_SECONDS); idle kept-alive
connections closed after `--keep-alive` seconds (0: none kept); and an answer to a request whose body the
app did not read to its end announces `Connection: close` and closes (the client, told the connection lives,
would send its next request into a closing socket). A stop signal reaches each worker's handler whichever of
its threads the kernel gives it to (stop_signals_reach_the_main_thread). A port another process listens on is
refused before granian starts: on Linux granian's workers bind with SO_REUSEPORT, so a second server on a port
in use would start and take a share of its connections instead of failing.
"""
import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading

from granian import Granian
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings

from worker.processes import API_GRACEFUL_SECONDS

METRICS_DIR_PREFIX = "billing-api-metrics-"


def port_in_use(host: str, port: int) -> OSError | None:
    """Why a bind of host:port without SO_REUSEPORT fails, if it does: another socket listens there. (With
    SO_REUSEADDR, as granian's own: the closed connections of a server just stopped do not count.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc
    return None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_signals_reach_the_main_thread() -> None:
    """In a granian worker process (api.app.get_app, in its main thread): a SIGTERM or SIGINT stops the worker
    whichever of its threads the kernel hands the signal to.

    Python runs signal handlers only in the main thread, and granian's WSGI worker parks that thread in a lock
    wait which only a signal delivered to that very thread interrupts. The kernel may hand a process's signal
    to any of its threads (granian's Rust threads, the app's): then the handler never runs, the worker serves
    on and is killed after API_GRACEFUL_SECONDS, with whatever it had in flight (granian 2.8.9: 1 SIGTERM in 4
    to busy workers). CPython writes each signal it catches, in whatever thread, to the wakeup fd; a thread
    reading it sends the first stop signal on to the main thread, whose handler then starts the drain (the
    handler runs once or twice: granian's shutdown event only needs setting).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    previous = signal.set_wakeup_fd(writable)
    if previous != -1:  # somebody else's (an event loop's): leave it theirs
        signal.set_wakeup_fd(previous)
        os.close(readable)
        os.close(writable)
        return
    main = threading.main_thread().ident

    def forward() -> None:
        while True:
            caught = [number for number in os.read(readable, 64) if number in STOP_SIGNALS]
            if caught:
                signal.pthread_kill(main, caught[0])
                return
    threading.Thread(target=forward, name="stop-signals", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m worker.http_server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=4, help="threads running the app, per worker process")
    p.add_argument("--keep-alive", type=int, default=75, help="seconds an idle connection is kept (0: none)")
    args = p.parse_args(argv)
    if taken := port_in_use(args.host, args.port):
        print(f"billing api: cannot listen on {args.host}:{args.port}: {taken.strerror}", file=sys.stderr)
        return 1
    made = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if made:  # before the workers start: one directory for all of them
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
    try:
        Granian("api.app:get_app", factory=True, interface=Interfaces.WSGI, address=args.host,
                port=args.port, workers=args.workers, blocking_threads=args.threads, websockets=False,
                http=HTTPModes.http1, respawn_failed_workers=True, workers_kill_timeout=API_GRACEFUL_SECONDS,
                # hyper's header read timeout also runs while a kept-alive connection waits for its next request
                http1_settings=HTTP1Settings(keep_alive=args.keep_alive > 0,
                                             header_read_timeout=max(args.keep_alive, 10) * 1000)).serve()
    finally:
        if made:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
