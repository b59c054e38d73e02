"""A real daemon under a fake service manager: the test binds the ``$NOTIFY_SOCKET``
datagram socket systemd would, and checks READY=1 (only once the control socket answers),
the watchdog pings from the event loop, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import DEADLINE, Daemon, run_meshctl

pytestmark = pytest.mark.integration


class Listener:
    """The service manager's end: collects notifications with their arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, dict[str, str]]] = []

    def next(self, timeout: float) -> dict[str, str] | None:
        """The next notification within ``timeout`` s (bounded polling), or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, timeout: float, daemon: Daemon) -> tuple[float, dict[str, str]]:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            got = self.next(min(left, 0.5))
            if got is not None and got.get(key) == "1":
                return self.received[-1]
            if got is None and daemon.proc is not None and daemon.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({daemon.proc.returncode}):\n{daemon.log()}")
        raise AssertionError(f"no {key}=1 within {timeout} s:\n{daemon.log()}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = Listener(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_ready_watchdog_and_stopping(tmp_path: Path, listener: Listener) -> None:
    daemon = Daemon(
        tmp_path,
        "svc",
        role="observer",
        env={"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"},
    )
    daemon.start()
    try:
        ready_at, ready = listener.wait_for("READY", DEADLINE, daemon)
        # READY=1 means "answers": the very first status query, made now, succeeds.
        st = daemon.status()
        out = run_meshctl("--state-dir", str(daemon.state_dir), "status", "--json")
        assert out.returncode == 0, out.stderr
        assert st["self"]["name"] == "svc" and st["self"]["ready_at"] is not None
        assert "svc (observer) in mesh" in ready.get("STATUS", "")

        # WATCHDOG_USEC=2 s: a ping every second from the event loop, the first at once.
        pings = [t for t, f in listener.received if f.get("WATCHDOG") == "1"]
        end = ready_at + 3.0
        while len(pings) < 2 and (left := end - time.monotonic()) > 0:
            got = listener.next(left)
            if got is not None and got.get("WATCHDOG") == "1":
                pings.append(listener.received[-1][0])
        assert len(pings) >= 2, f"{len(pings)} WATCHDOG=1 within 3 s of READY=1"

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", DEADLINE, daemon)
        assert daemon.proc.wait(timeout=DEADLINE) == 0
    finally:
        daemon.stop()


def test_watchdog_pid_of_another_process_means_no_pings(tmp_path: Path, listener: Listener) -> None:
    # systemd sets WATCHDOG_PID to the main process; a child that inherits the variables
    # must not ping on its behalf.
    daemon = Daemon(
        tmp_path,
        "svc2",
        role="observer",
        env={
            "NOTIFY_SOCKET": str(listener.path),
            "WATCHDOG_USEC": "200000",
            "WATCHDOG_PID": "1",
        },
    )
    daemon.start()
    try:
        ready_at, _ = listener.wait_for("READY", DEADLINE, daemon)
        end = ready_at + 1.0  # five would-be ping periods
        while (left := end - time.monotonic()) > 0:
            listener.next(left)
        assert not [f for _, f in listener.received if "WATCHDOG" in f]
    finally:
        daemon.stop()
