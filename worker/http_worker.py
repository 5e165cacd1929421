"""gunicorn's threaded worker: it refuses new connections as soon as it starts to drain, and it closes a
connection whose request body the application answered without reading."""
import threading

from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers.gthread import ThreadWorker


def body_read(body) -> bool:
    """Whether gunicorn's request body was read to its end (a request without one has a zero length)."""
    if body.buf.tell():
        return False
    reader = body.reader
    if isinstance(reader, LengthReader):
        return reader.length == 0
    if isinstance(reader, ChunkedReader):
        return reader.parser is None and not reader.buf.tell()
    return False


class DrainingThreadWorker(ThreadWorker):
    """On SIGTERM, gthread stops accepting but keeps its listening socket open until the drain ends, so a
    connection made meanwhile waits in the backlog and is reset at exit; closed, it is refused at once and
    the client (or the balancer) goes elsewhere. The in-flight requests still finish.

    gunicorn drops a `Connection` header set by the application and announces keep-alive, then drains at
    most 64 KiB of an unread body and closes the connection if more is left: the client, told keep-alive,
    sends its next request into a closing socket. Here an answer to a request whose body was not read to
    its end (a 413, a 401 before the body was looked at) announces `Connection: close` and the connection
    closes; an answer to a read body keeps it alive."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._serving = threading.local()  # the HTTP/1 request this pool thread is answering

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            for listener in self.sockets:
                listener.close()

    def handle_request(self, req, conn):
        self._serving.request = req
        try:
            return super().handle_request(req, conn)
        finally:
            self._serving.request = None

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = self._closing_unread_bodies(self.wsgi)

    def _closing_unread_bodies(self, app):
        def serve(environ, start_response):
            def start(status, headers, exc_info=None):
                req = getattr(self._serving, "request", None)
                if req is not None and req.body is environ.get("wsgi.input") and not body_read(req.body):
                    req.force_close()
                return start_response(status, headers, exc_info)
            return app(environ, start)
        return serve
