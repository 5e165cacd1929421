"""gunicorn's threaded worker, refusing new connections as soon as it starts to drain."""
from gunicorn.workers.gthread import ThreadWorker


class DrainingThreadWorker(ThreadWorker):
    """On SIGTERM, gthread stops accepting but keeps its listening socket open until the drain ends, so a
    connection made meanwhile waits in the backlog and is reset at exit; closed, it is refused at once and
    the client (or the balancer) goes elsewhere. The in-flight requests still finish."""

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()
