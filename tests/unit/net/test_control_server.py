"""The control socket server: a client that hangs up is normal, never an error."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshd.control_proto import CONTROL_VERSION, header_length, pack, unpack
from meshd.net.control import ControlServer


class Handler:
    """Answers ``big`` after ``release`` is set (a reply far larger than a socket buffer)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.calls: list[str] = []

    async def __call__(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append(op)
        if op == "big":
            self.started.set()
            await self.release.wait()
            return "x" * (4 * 1024 * 1024)
        return {"pong": True}


@pytest.fixture
async def served() -> AsyncIterator[tuple[ControlServer, Handler, list[dict[str, Any]]]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    handler = Handler()
    with tempfile.TemporaryDirectory(prefix="meshd-ctl-") as tmp:
        server = ControlServer(Path(tmp) / "c.sock", handler)
        await server.start()
        try:
            yield server, handler, errors
        finally:
            await server.close()


async def call(path: Path, op: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(pack({"v": CONTROL_VERSION, "op": op, "args": {}}))
        await writer.drain()
        body = await reader.readexactly(header_length(await reader.readexactly(4)))
        return unpack(body)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_client_hanging_up_mid_answer_is_not_an_error(
    served: tuple[ControlServer, Handler, list[dict[str, Any]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, handler, errors = served
    # A raw socket with a tiny receive buffer: the 4 MiB answer cannot fit in flight, so
    # the server is still writing when the client resets the connection.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(str(server.path))
    sock.sendall(pack({"v": CONTROL_VERSION, "op": "big", "args": {}}))
    await asyncio.wait_for(handler.started.wait(), 5)
    sock.close()
    handler.release.set()
    # The server keeps answering other clients, and nothing was logged as an error.
    for _ in range(3):
        assert await asyncio.wait_for(call(server.path, "ping"), 5) == {
            "ok": True,
            "result": {"pong": True},
        }
    assert handler.calls == ["big", "ping", "ping", "ping"]
    assert errors == []
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


async def test_a_client_hanging_up_mid_request_is_not_an_error(
    served: tuple[ControlServer, Handler, list[dict[str, Any]]],
) -> None:
    server, handler, errors = served
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.path))
    sock.sendall(b"\x00\x00\x01\x00partial")  # a header promising 256 bytes, then gone
    sock.close()
    assert (await call(server.path, "ping"))["ok"] is True
    assert handler.calls == ["ping"]
    assert errors == []


async def test_an_oversized_request_is_refused_with_a_reason(
    served: tuple[ControlServer, Handler, list[dict[str, Any]]],
) -> None:
    server, _, _ = served
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(b"\xff\xff\xff\xff")
    await writer.drain()
    reply = unpack(await reader.readexactly(header_length(await reader.readexactly(4))))
    writer.close()
    await writer.wait_closed()
    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_request"
    assert "over the limit" in reply["error"]["message"]
