"""Keep-alive done right for a request whose body the app did not read: the answer says `Connection: close`."""


class _Input:
    """wsgi.input, noting whether the body was read to its end."""

    def __init__(self, stream, length: int | None) -> None:
        self._stream, self._left = stream, length  # None: chunked, read until a read comes back empty
        self.at_end = length == 0

    def _count(self, data: bytes, asked: int | None) -> bytes:
        if self._left is not None:
            self._left -= len(data)
            self.at_end = self._left <= 0
        elif not data and asked != 0:
            self.at_end = True
        return data

    def read(self, size: int = -1) -> bytes:
        return self._count(self._stream.read(size) if size is not None and size >= 0 else self._stream.read(), size)

    def readline(self, size: int = -1) -> bytes:
        return self._count(self._stream.readline(size) if size >= 0 else self._stream.readline(), size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def __iter__(self):
        while line := self.readline():
            yield line


def closing_unread_bodies(app):
    """The WSGI app, answering with `Connection: close` where the request's body was not read to its end."""
    def serve(environ, start_response):
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and (not length.isdigit() or int(length) == 0):
            return app(environ, start_response)
        body = environ["wsgi.input"] = _Input(environ["wsgi.input"], None if chunked else int(length))

        def start(status, headers, exc_info=None):
            if not body.at_end and not any(name.lower() == "connection" for name, _ in headers):
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, exc_info)
        return app(environ, start)
    serve.__wrapped__ = app
    return serve
