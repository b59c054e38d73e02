"""Real-process harness: start ``meshd`` daemons, query them, kill them, clean up.

Every daemon gets its own state dir under the test's tmp_path and a free port triple
(``--listen 127.0.0.1:0``). Processes are tracked by pid and always stopped by the
fixture that made them. Waiting is polling with generous deadlines, never fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from meshd.client import Client
from meshd.errors import ControlError

#: Generous: CI machines are slow and shared; we poll, so a fast run stays fast.
DEADLINE = float(os.environ.get("MESHD_TEST_DEADLINE", "30"))


def meshd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshd", *args]


def run_meshd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshd_cmd(*args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def run_meshctl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd.cli.meshctl_app", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for(pred: Callable[[], Any], timeout: float = DEADLINE, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < end:
        try:
            value = pred()
            if value:
                return value
        except (ControlError, OSError) as exc:
            last_exc = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last_exc})")


class Daemon:
    def __init__(
        self,
        root: Path,
        name: str,
        role: str = "network-admin",
        token: str | None = None,
        peers: tuple[str, ...] = (),
        mdns: bool = False,
        listen: str = "127.0.0.1:0",
        extra: tuple[str, ...] = (),
        wrap: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.role = role
        self.state_dir = root / name
        self.token = token
        self.peers = peers
        self.mdns = mdns
        self.listen = listen
        self.extra = extra
        self.wrap = wrap
        #: Extra environment variables for the daemon (on top of the test's environment).
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"{name}.log"
        self._status: dict[str, Any] | None = None

    def command(self) -> list[str]:
        cmd = meshd_cmd(
            "start",
            "--role",
            self.role,
            "--name",
            self.name,
            "--state-dir",
            str(self.state_dir),
            "--listen",
            self.listen,
            "--log-level",
            "debug",
        )
        if self.token:
            cmd += ["--join", self.token]
        for p in self.peers:
            cmd += ["--peer", p]
        if not self.mdns:
            cmd.append("--no-mdns")
        return [*self.wrap, *cmd, *self.extra]

    def start(self) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env is not None else None,
        )
        log.close()
        return self

    def client(self) -> Client:
        return Client(self.state_dir, timeout=5.0)

    def status(self) -> dict[str, Any]:
        with self.client() as c:
            self._status = c.status()
        return self._status

    def wait_ready(self, timeout: float = DEADLINE) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"{self.name} exited with {code}:\n{self.log()}")
            return self.status()

        result: dict[str, Any] = wait_for(ready, timeout, f"{self.name} to answer status")
        return result

    @property
    def node_id(self) -> str:
        return str((self._status or self.status())["self"]["id"])

    @property
    def seed(self) -> str:
        st = self._status or self.status()
        return f"127.0.0.1:{st['self']['ports']['router']}"

    def peer_states(self) -> dict[str, str]:
        return {p["id"]: p["state"] for p in self.status()["peers"]}

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except FileNotFoundError:
            return ""


class Mesh:
    """A set of daemons that share one mesh key; stops all of them on close."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[Daemon] = []
        first = root / "_init"
        out = run_meshd("init", "--state-dir", str(first))
        assert out.returncode == 0, out.stderr
        self.token = run_meshd("token", "--state-dir", str(first)).stdout.strip()

    def add(self, name: str, **kw: Any) -> Daemon:
        kw.setdefault("token", self.token)
        d = Daemon(self.root, name, **kw)
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            d.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {d.name}\n{d.log()}" for d in self.daemons)


def all_see_all(daemons: list[Daemon]) -> bool:
    ids = {d.node_id for d in daemons}
    for d in daemons:
        states = d.peer_states()
        if any(states.get(i) != "alive" for i in ids - {d.node_id}):
            return False
    return True


def iter_alive(daemons: list[Daemon]) -> Iterator[Daemon]:
    return (d for d in daemons if d.proc is not None and d.proc.poll() is None)
