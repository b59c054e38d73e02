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
from collections.abc import Callable, Iterator
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
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}

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

    def long_call(self, hold: float, op: str, **args: Any) -> Any:
        """:meth:`call` for an operation the daemon may hold up to ``hold`` s (a
        long-poll): the socket timeout is stretched to cover it for this call only."""
        old = self.timeout
        self.timeout = max(old, hold + 5.0)
        if self._sock is not None:
            self._sock.settimeout(self.timeout)
        try:
            return self.call(op, **args)
        finally:
            self.timeout = old
            if self._sock is not None:
                self._sock.settimeout(old)

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

    def quarantine(self) -> list[dict[str, Any]]:
        """Records of the node's store found bad at start and set aside: ``{"table",
        "key", "reason", "at", "size"}``, oldest first."""
        result: list[dict[str, Any]] = self.call("quarantine_list")
        return result

    def quarantine_clear(self) -> int:
        """Delete the quarantined records (after looking at them); returns how many."""
        return int(self.call("quarantine_clear")["cleared"])

    def events(self, since: float = 0.0, wait: float = 0.0) -> list[dict[str, Any]]:
        """Recent events after ``since`` (wall seconds, the ``at`` of the newest event seen):
        membership (AGENT_JOINED, AGENT_FAILED, AGENT_LEFT, AGENT_SUSPECT...), the
        election (LEAD_ELECTED, LEAD_LOST, STEPPED_DOWN), tasks (TASK_*), skill packs
        (SKILL_*) and ADMISSION_REFUSED. ``wait`` > 0: a long-poll that returns as soon
        as there is one (at most 30 s)."""
        if wait > 0:
            events: list[dict[str, Any]] = self.long_call(wait, "events", since=since, wait=wait)
            return events
        result: list[dict[str, Any]] = self.call("events", since=since)
        return result

    # -- delegation ---------------------------------------------------------------------
    def delegate(
        self,
        skill: str,
        params: dict[str, Any] | None = None,
        *,
        role: str | None = None,
        node: str | None = None,
        capability: str | None = None,
        priority: int = 5,
        timeout: float | None = None,
        deadline: float | None = None,
        after: tuple[str, ...] | list[str] = (),
        idempotent: bool | None = None,
        verify: bool = False,
        retries: int | None = None,
        parent: str | None = None,
    ) -> TaskHandle:
        """Delegate ``skill`` with ``params`` to the mesh. Returns once the local daemon
        stored the task (durably); the lead assigns it to the best agent. Raises
        ControlError (codes unknown_skill, bad_params, unknown_role, unknown_node,
        unknown_task, bad_request) before anything is stored when the request is wrong.

        ``after``: task ids that must complete first. ``idempotent``: None takes the
        skill's own flag (a non-idempotent task is never re-run without an operator)."""
        view = self.call(
            "delegate",
            skill=skill,
            params=params or {},
            role=role,
            node=node,
            capability=capability,
            priority=priority,
            timeout=timeout,
            deadline=deadline,
            after=list(after),
            idempotent=idempotent,
            verify=verify,
            retries=retries,
            parent=parent,
        )
        return TaskHandle(self, view)

    def delegate_many(self, tasks: list[dict[str, Any]]) -> list[TaskHandle]:
        """Delegate many tasks in one call (at most 1000): each a mapping of
        :meth:`delegate`'s arguments (``{"skill": "echo", "params": {...}, "role": ...}``).
        All are checked before any is stored (the first bad one refuses the batch, naming
        its index); then they are stored together, durably. Returns handles in order."""
        items = []
        for t in tasks:
            item = dict(t)
            if "after" in item:
                item["after"] = list(item["after"])
            item.setdefault("params", {})
            items.append(item)
        views = self.call("delegate_many", tasks=items)
        return [TaskHandle(self, {**v, "terminal": False, "version": None}) for v in views]

    def run(
        self, skill: str, params: dict[str, Any] | None = None, timeout: float = 30.0, **kw: Any
    ) -> Any:
        """Delegate and wait for the result in one call (the daemon waits, up to
        ``timeout`` s, at most 30 s per call): the result, or :class:`TaskFailed`, or
        TimeoutError. Takes the keyword arguments of :meth:`delegate`."""
        view = self.long_call(
            min(timeout, 30.0),
            "delegate",
            skill=skill,
            params=params or {},
            wait=min(timeout, 30.0),
            **{k: (list(v) if k == "after" else v) for k, v in kw.items()},
        )
        handle = TaskHandle(self, view)
        remaining = timeout - min(timeout, 30.0)
        return handle.result(remaining if not view["terminal"] else 0.0)

    def task(self, task_id: str) -> dict[str, Any]:
        """One task (full id or a unique prefix of at least 4 characters)."""
        result: dict[str, Any] = self.call("task_get", id=task_id)
        return result

    def tasks(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Tasks known to this node, newest first (optionally only those in ``state``)."""
        result: list[dict[str, Any]] = self.call("task_list", state=state, limit=limit)
        return result

    def watch_task(
        self, task_id: str, after: list[int] | None = None, wait: float = 10.0
    ) -> dict[str, Any]:
        """The task once it changed after version ``after`` (long-poll up to ``wait`` s)."""
        result: dict[str, Any] = self.long_call(
            wait, "task_watch", id=task_id, after=after, wait=wait
        )
        return result

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a task (relayed to the lead); returns the task as it stands."""
        result: dict[str, Any] = self.call("task_cancel", id=task_id)
        return result

    def retry(self, task_id: str, force: bool = False) -> dict[str, Any]:
        """Run a FAILED task again on purpose (relayed to the lead). A non-idempotent task
        lost with its agent may already have run: it is retried only with ``force``."""
        result: dict[str, Any] = self.call("task_retry", id=task_id, force=force)
        return result

    def handoff(self, task_id: str, to: str | None = None) -> dict[str, Any]:
        """Move a running task, with its checkpoint, to ``to`` (None: the best other agent)."""
        result: dict[str, Any] = self.call("task_handoff", id=task_id, to=to or "")
        return result

    def approve(self, task_id: str) -> dict[str, Any]:
        """Let a task whose skill needs an operator's approval run (relayed to the lead)."""
        result: dict[str, Any] = self.call("task_approve", id=task_id)
        return result

    def deny(self, task_id: str, reason: str = "") -> dict[str, Any]:
        """Refuse a task waiting for approval: it fails with ``denied`` and ``reason``."""
        result: dict[str, Any] = self.call("task_deny", id=task_id, reason=reason)
        return result

    # -- skills -------------------------------------------------------------------------
    def skills(self, mesh: bool = False) -> list[dict[str, Any]]:
        """Skills this node can run (with run statistics); ``mesh``: also every pack the
        other members announced."""
        result: list[dict[str, Any]] = self.call("skill_list", mesh=mesh)
        return result

    def describe_skill(self, name: str) -> dict[str, Any]:
        """What a skill does, its parameters, limits and permissions, where it is held."""
        result: dict[str, Any] = self.call("skill_describe", name=name)
        return result

    def inspect_pack(self, path: str | Path) -> dict[str, Any]:
        """What a pack file holds and who signed it (read by the daemon, not installed)."""
        result: dict[str, Any] = self.call("skill_describe", file=str(Path(path).resolve()))
        return result

    def pack_skill(self, folder: str | Path, out: str | Path | None = None) -> dict[str, Any]:
        """Build a signed pack from a skill folder (signed with this node's key); written
        to ``out``, else ``NAME-VERSION.pack`` in the current directory."""
        result: dict[str, Any] = self.call(
            "skill_pack",
            dir=str(Path(folder).resolve()),
            out=str(Path(out).resolve()) if out else None,
            cwd=os.getcwd(),
        )
        return result

    def install_pack(self, path: str | Path) -> dict[str, Any]:
        """Verify and install a pack file on this node."""
        result: dict[str, Any] = self.call("skill_install", file=str(Path(path).resolve()))
        return result

    def install_skill(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        """Fetch the newest version of ``name`` a member announces, verify and install it."""
        result: dict[str, Any] = self.long_call(timeout, "skill_install", name=name)
        return result

    def remove_skill(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("skill_remove", name=name)
        return result

    def publish_skill(self, name: str) -> dict[str, Any]:
        """Announce an installed pack to the mesh (members that trust its signer fetch it)."""
        result: dict[str, Any] = self.call("skill_publish", name=name)
        return result

    def revoke(
        self, keys: list[str] | None = None, packs: list[str] | None = None
    ) -> dict[str, Any]:
        """Revoke signer keys and/or pack ids, here and mesh-wide."""
        result: dict[str, Any] = self.call("skill_revoke", keys=keys or [], packs=packs or [])
        return result

    def trust_add(self, key: str, note: str = "", revoker: bool = False) -> dict[str, Any]:
        """Trust packs signed by ``key`` (an Ed25519 public key, 64 hex digits); with
        ``revoker``, also accept its revocations of any signer key or pack."""
        result: dict[str, Any] = self.call("skill_trust_add", key=key, note=note, revoker=revoker)
        return result

    def trust_remove(self, key: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("skill_trust_remove", key=key)
        return result

    def trust_list(self) -> list[dict[str, Any]]:
        """Every key this node trusts: the operator's, its own, the members'."""
        result: list[dict[str, Any]] = self.call("skill_trust_list")
        return result

    # -- events -----------------------------------------------------------------------
    def on(self, kind: str, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn(event)`` for every event of ``kind`` (``"*"``: all) seen by
        :meth:`listen`: TASK_SUBMITTED, TASK_ASSIGNED, TASK_STARTED, TASK_PROGRESS,
        TASK_COMPLETED, TASK_FAILED, TASK_CANCELLED, TASK_RETRY, AGENT_JOINED,
        AGENT_FAILED, AGENT_LEFT, LEAD_ELECTED, LEAD_LOST, ..."""
        self._handlers.setdefault(kind, []).append(fn)

    def listen(
        self,
        duration: float | None = None,
        since: float | None = None,
        until: Callable[[], bool] | None = None,
    ) -> int:
        """Deliver events to the :meth:`on` handlers for ``duration`` seconds (None: until
        interrupted), or until ``until()`` is true after a delivery. Starts with events
        after ``since`` (default: now). Returns how many were delivered."""
        from meshd import clock

        cursor = clock.wall() if since is None else since
        end = None if duration is None else clock.monotonic() + duration
        delivered = 0
        while end is None or clock.monotonic() < end:
            wait = 10.0 if end is None else max(0.0, min(10.0, end - clock.monotonic()))
            events = self.events(cursor, wait) if wait > 0 else self.events(cursor)
            for event in events:
                cursor = max(cursor, float(event["at"]))
                for fn in [*self._handlers.get(event["type"], []), *self._handlers.get("*", [])]:
                    fn(event)
                    delivered += 1
            if until is not None and until():
                break
        return delivered


class TaskFailed(ControlError):
    """A delegated task ended without a result: ``code`` is the task's error code
    (``agent_lost``, ``timeout``, ``rejected``, a skill's own...) or ``cancelled``."""

    def __init__(self, message: str, code: str, task: dict[str, Any]) -> None:
        super().__init__(message, code)
        self.task = task


class TaskHandle:
    """A delegated task, as returned by :meth:`Client.delegate`."""

    def __init__(self, client: Client, view: dict[str, Any]) -> None:
        self.client = client
        self.view = view
        self.task_id: str = view["id"]

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id}, {self.view['state']})"

    def refresh(self) -> dict[str, Any]:
        self.view = self.client.task(self.task_id)
        return self.view

    @property
    def state(self) -> str:
        return str(self.view["state"])

    def progress(self) -> tuple[float, str]:
        """The latest (pct, message) the running skill reported."""
        prog = self.refresh()["progress"]
        return float(prog["pct"]), str(prog["message"])

    def updates(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Every new version of the task until it finishes (or ``timeout`` s pass)."""
        from meshd import clock

        end = None if timeout is None else clock.monotonic() + timeout
        yield self.view
        while not self.view["terminal"]:
            left = 10.0 if end is None else end - clock.monotonic()
            if left <= 0:
                return
            view = self.client.watch_task(self.task_id, self.view["version"], min(left, 10.0))
            if view["version"] != self.view["version"] or view["terminal"]:
                self.view = view
                yield view

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The task once it finished; TimeoutError if it did not within ``timeout`` s."""
        for _ in self.updates(timeout):
            pass
        if not self.view["terminal"]:
            raise TimeoutError(f"task {self.task_id} still {self.view['state']} after {timeout} s")
        return self.view

    def result(self, timeout: float | None = None) -> Any:
        """The task's result once it completed. Raises :class:`TaskFailed` if it failed
        or was cancelled, TimeoutError if it is not done within ``timeout`` s."""
        view = self.wait(timeout)
        if view["state"] in ("complete", "verified"):
            return view["result"]
        err = view.get("error") or {}
        code = str(err.get("code") or view["state"])
        message = f"task {self.task_id} {view['state']}: {err.get('message') or code}"
        raise TaskFailed(message, code, view)

    def cancel(self) -> dict[str, Any]:
        self.view = self.client.cancel(self.task_id)
        return self.view
