"""Python client for a local meshd: what ``meshctl`` uses, and what users' scripts use.

    from meshd.client import Client
    with Client() as mesh:             # default state dir, or Client(state_dir=...)
        status = mesh.status()
        for peer in status["peers"]:
            print(peer["name"], peer["state"])

It talks to the daemon over its control socket (``<state-dir>/control.sock``), which only
the daemon's user can open. It imports nothing heavy, so scripts and ``meshctl`` start fast.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from meshd.control_proto import CONTROL_VERSION, SOCKET_NAME, header_length, pack, unpack
from meshd.errors import ControlError, DaemonNotRunning


class Client:
    def __init__(self, state_dir: Path | str | None = None, timeout: float = 5.0) -> None:
        if state_dir is None:
            from meshd.config import default_state_dir  # ~17 ms: only when needed

            state_dir = default_state_dir()
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SOCKET_NAME
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        if not self.path.exists():
            raise DaemonNotRunning(
                f"meshd is not running (no control socket at {self.path}); "
                "start it with: meshd start --role ROLE"
                + ("" if self.state_dir.exists() else f" (state dir {self.state_dir} missing)")
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            raise DaemonNotRunning(
                f"meshd is not running (stale control socket at {self.path}); "
                "start it with: meshd start --role ROLE"
            ) from None
        except PermissionError:
            sock.close()
            raise ControlError(
                f"permission denied on {self.path}: run meshctl as the daemon's user "
                f"(uid {os.stat(self.path).st_uid})",
                code="permission",
            ) from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, op: str, **args: Any) -> Any:
        """One request/reply. Raises ControlError with the daemon's code and message."""
        self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(pack({"v": CONTROL_VERSION, "op": op, "args": args}))
            header = self._recv_exact(4)
            reply = unpack(self._recv_exact(header_length(header)))
        except TimeoutError:
            self.close()
            raise ControlError(f"meshd did not answer {op!r} within {self.timeout} s") from None
        except (ConnectionError, OSError) as exc:
            self.close()
            raise DaemonNotRunning(f"lost the connection to meshd: {exc}") from None
        if reply.get("ok"):
            return reply.get("result")
        err = reply.get("error") or {}
        raise ControlError(str(err.get("message", "unknown error")), str(err.get("code", "error")))

    def _recv_exact(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            buf += chunk
        return bytes(buf)

    # -- typed helpers ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The mesh as this node sees it (schema: README, "meshctl status --json")."""
        result: dict[str, Any] = self.call("status")
        return result

    def ping(self) -> dict[str, Any]:
        """Is the local daemon there? (pid and node id)"""
        result: dict[str, Any] = self.call("ping")
        return result

    def peer_ping(self, peer: str, count: int = 1, timeout: float = 2.0) -> list[float]:
        """Round-trip times (s) of PINGs from the local daemon to a peer (name or id)."""
        result = self.call("peer_ping", peer=peer, count=count, timeout=timeout)
        return [float(x) for x in result["rtt_s"]]

    def lead_transfer(self, node: str) -> dict[str, Any]:
        """Ask the lead to hand over to ``node`` (name or id); forwarded if we do not lead."""
        result: dict[str, Any] = self.call("lead_transfer", target=node)
        return result

    def lead_step_down(self) -> dict[str, Any]:
        """Ask the lead to step down; the next node in priority order takes over."""
        result: dict[str, Any] = self.call("lead_step_down")
        return result

    def audit(self, since: float = 0.0, kind: str | None = None) -> list[dict[str, Any]]:
        """Durable coordination records (LEAD_ELECTED, LEAD_LOST, STEPPED_DOWN, ...)."""
        result: list[dict[str, Any]] = self.call("audit", since=since, type=kind)
        return result

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Recent events after ``since`` (wall seconds): AGENT_JOINED, AGENT_FAILED,
        AGENT_LEFT, AGENT_SUSPECT, LEAD_ELECTED, LEAD_LOST, STEPPED_DOWN."""
        result: list[dict[str, Any]] = self.call("events", since=since)
        return result
