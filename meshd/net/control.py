"""The daemon side of the control socket (see ``meshd.control_proto``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from meshd import log
from meshd.control_proto import CONTROL_VERSION, header_length, pack, unpack
from meshd.errors import ControlError, MeshError

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]
_log = log.get("meshd.control")


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale socket of a dead daemon (the state lock is held)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: requests answered in order until it hangs up (at any
        moment, even while its answer is being written: that is normal, not an error)."""
        try:
            while True:
                try:
                    header = await reader.readexactly(4)
                    body = await reader.readexactly(header_length(header))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except ValueError as exc:
                    writer.write(pack(_error("bad_request", str(exc))))
                    await writer.drain()
                    return
                writer.write(pack(await self._dispatch(body)))
                await writer.drain()
        except ConnectionError:
            return  # the client went away mid-answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, body: bytes) -> dict[str, Any]:
        try:
            req = unpack(body)
        except Exception:
            return _error("bad_request", "request is not a msgpack map")
        if req.get("v") != CONTROL_VERSION:
            return _error("bad_version", f"control protocol version {req.get('v')!r} unsupported")
        op, args = req.get("op"), req.get("args") or {}
        if not isinstance(op, str) or not isinstance(args, dict):
            return _error("bad_request", "request needs a string 'op' and a map 'args'")
        try:
            return {"ok": True, "result": await self.handler(op, args)}
        except ControlError as exc:
            return _error(exc.code, str(exc))
        except MeshError as exc:
            return _error("error", str(exc))
        except Exception as exc:
            _log.exception("control_op_failed", op=op)
            return _error("internal", f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}
