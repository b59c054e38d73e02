"""A minimal HTTP/1.1 server for ``GET /metrics`` and ``GET /healthz``, no dependency.

**Not authenticated**: it binds 127.0.0.1 by default; bind a wider address only on a
trusted network (the metrics name every node, role and skill of the mesh). What it
serves comes from two callables (the node's Prometheus text and its health), so this
module knows HTTP, not meshd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

from meshd import log

#: Content type of the Prometheus text exposition format 0.0.4.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT: Final = "text/plain; charset=utf-8"


class MetricsServer:
    """``GET /metrics`` and ``GET /healthz`` over HTTP/1.1, one request per connection.

    ``metrics`` returns the exposition text; ``healthy`` says whether ``/healthz``
    answers 200 ``ok`` (else 503). Both run on the event loop, so they must be quick.
    Requests are bounded: headers of at most ``max_header_bytes`` (431 beyond), the
    whole head within ``read_timeout`` s (408 after), at most ``max_connections`` at
    once (503 beyond). HEAD is served like GET, without the body; other methods get
    405, other paths 404.

    Not authenticated: keep the default bind address (127.0.0.1) unless the network is
    trusted.
    """

    def __init__(
        self,
        metrics: Callable[[], str],
        healthy: Callable[[], bool] | None = None,
        *,
        read_timeout: float = 5.0,
        max_header_bytes: int = 8192,
        max_connections: int = 64,
    ) -> None:
        self.metrics = metrics
        self.healthy = healthy
        self.read_timeout = read_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (port 0: a free one); returns the bound port."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=self.max_header_bytes
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening and drop the connections in progress."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        conns = list(self._conns)
        for task in conns:
            task.cancel()
        for task in conns:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            if len(self._conns) > self.max_connections:
                await self._respond(writer, 503, "too many connections\n")
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
        except asyncio.LimitOverrunError:
            await self._respond(writer, 431, "request headers too large\n")
            return
        except asyncio.IncompleteReadError:
            return  # the client went away (or sent half a request and closed)
        except TimeoutError:
            await self._respond(writer, 408, "request timeout\n")
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
            await self._respond(writer, 400, "bad request\n")
            return
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        if path not in ("/metrics", "/healthz"):
            await self._respond(writer, 404, "not found\n", head_only=head_only)
            return
        if method not in ("GET", "HEAD"):
            await self._respond(writer, 405, "method not allowed\n", extra=("Allow: GET, HEAD",))
            return
        try:
            if path == "/metrics":
                status, body, ctype = 200, self.metrics(), CONTENT_TYPE
            else:
                ok = True if self.healthy is None else bool(self.healthy())
                status, body, ctype = (200, "ok\n", _TEXT) if ok else (503, "unhealthy\n", _TEXT)
        except Exception as exc:
            log.get("meshd.http").warning("metrics_provider_failed", path=path, error=repr(exc))
            status, body, ctype = 500, "internal error\n", _TEXT
        await self._respond(writer, status, body, ctype, head_only=head_only)

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: str,
        ctype: str = _TEXT,
        *,
        head_only: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        data = body.encode("utf-8")
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(data)}",
            "Connection: close",
            "Cache-Control: no-store",
            *extra,
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(data)
        await asyncio.wait_for(writer.drain(), self.read_timeout)
