"""``meshctl top``: the frame as a pure function, and the live dashboard in a pseudo-terminal
against a real 3-node mesh (keys, Ctrl-C, terminal restored, resize, no line past the edge).

The live output is fed to a minimal VT100 model (cursor moves, erase, text, autowrap): a
character that would wrap or a newline that would scroll the screen counts as an overflow,
so "every line fits 80 columns" is checked on what a terminal would really show.

Ctrl-C exits with 0, like ``q`` (and ``meshctl status --watch``): leaving a dashboard is its
normal end, not an error.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, Mesh, all_see_all, wait_for

from meshd.cli.top import ENTER, LEAVE, Throughput, paint, render_frame

# ``meshctl`` with ``top`` registered (a no-op once meshctl_app registers it itself).
SHIM = """\
from meshd.cli.meshctl_app import app
from meshd.cli.top import top

names = {c.name or getattr(c.callback, "__name__", None) for c in app.registered_commands}
if "top" not in names:
    app.command("top")(top)
app(prog_name="meshctl")
"""
NOW = 1_700_000_000.0
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\r|\n|[^\x1b\r\n]|\x1b")


# --- a synthetic mesh for the pure frame ---------------------------------------------------
def _node(i: int, name: str, role: str = "network-admin", **kw: Any) -> dict[str, Any]:
    return {
        "id": f"{i:032x}",
        "name": name,
        "role": role,
        "state": "alive",
        "priority": 60,
        "address": "127.0.0.1",
        "last_seen": NOW - 0.2,
        "task": None,
        "tasks": 0,
        **kw,
    }


def _status(peers: list[dict[str, Any]], lead: str | None = "alpha") -> dict[str, Any]:
    me = dict(_node(1, "alpha", "team-lead"), mesh_id="3f2a9c0d1e2b4a5c")
    by_name = {p["name"]: p for p in [me, *peers]}
    counts = {s: sum(p["state"] == s for p in peers) for s in ("alive", "suspect", "dead", "left")}
    states = ["pending", "assigned", "running", "complete", "verified", "rejected", "failed"]
    totals: dict[str, Any] = dict.fromkeys([*states, "retry", "cancelled", "waiting_approval"], 0)
    totals.update(pending=1, running=1, complete=11, verified=1, failed=1, retry=1)
    totals.update(waiting_approval=1, total=18, success_rate=12 / 13)
    return {
        "schema": 1,
        "self": me,
        "peers": peers,
        "lead": {"id": by_name[lead]["id"], "name": lead, "term": 7, "since": NOW - 60}
        if lead
        else None,
        "lead_reason": None if lead else "no lead: no quorum",
        "counts": {**counts, "total": len(peers) + 1},
        "tasks": {"totals": totals, "queue": {}, "nodes": {}, "here": {}},
    }


SLEEPING = {"id": "ab" * 16, "skill": "sleep", "state": "running", "pct": 52.4,
            "message": "10.48/20 s", "updated_at": NOW}  # fmt: skip
QUEUE = [
    {"id": "11" * 16, "skill": "echo", "priority": 5, "state": "pending", "created_at": NOW - 9,
     "requirement": {"role": "devops"}, "depends_on": [], "history": []},
    {"id": "22" * 16, "skill": "scan", "priority": 9, "state": "retry", "created_at": NOW - 5,
     "retry_count": 1, "retry_limit": 3, "error": {"code": "timeout"}},
    {"id": "33" * 16, "skill": "sysinfo", "priority": 5, "state": "waiting_approval",
     "created_at": NOW - 200},
]  # fmt: skip
EVENTS = [
    {"type": "LEAD_ELECTED", "lead_name": "alpha", "term": 7, "reason": "majority", "at": NOW - 60},
    {"type": "AGENT_FAILED", "node": "9" * 32, "name": "delta", "reason": "no ack", "at": NOW - 9},
    {"type": "TASK_FAILED", "task_id": "77" * 16, "skill": "scan", "node": f"{3:032x}",
     "error": {"code": "timeout"}, "at": NOW - 3},
]  # fmt: skip


def _fits(frame: str, width: int, height: int) -> list[str]:
    lines = frame.split("\n")
    assert len(lines) <= height, (len(lines), frame)
    assert all(len(line) <= width for line in lines), frame
    assert "\x1b" not in frame
    return lines


def test_frame_fits_80x24_with_everything() -> None:
    peers = [
        _node(2, "bravo", task=SLEEPING, tasks=1),
        _node(3, "charlie"),
        _node(4, "delta", state="dead"),
    ]
    frame = render_frame(_status(peers), QUEUE, EVENTS, 80, 24, NOW, 4.25)
    lines = _fits(frame, 80, 24)
    assert "lead alpha (term 7)" in lines[0] and "4 nodes (3 alive, 1 dead)" in lines[0]
    assert time.strftime("%H:%M:%S", time.localtime(NOW)) in lines[0]
    agents = [line for line in lines if re.match(r"[* ] (alpha|bravo|charlie|delta) ", line)]
    assert agents[0].startswith("* alpha")
    assert [re.findall(r"alpha|bravo|charlie|delta", a)[0] for a in agents] == [
        "alpha",
        "bravo",
        "charlie",
        "delta",
    ]  # self first, then alive peers, then the dead one
    assert re.search(r"alpha +team-lead +lead +0 -", frame)
    assert re.search(r"bravo +network-admin +alive +1 sleep \[#####\.\.\.\.\.\]  52%", frame)
    # The queue: priority first, then the oldest; why each waits.
    queued = [line.split()[0] for line in lines if re.match(r"  (11|22|33){4} ", line)]
    assert queued == ["22222222", "33333333", "11111111"]
    assert "retry 1/3 after timeout" in frame and "needs approval" in frame
    assert "role devops" in frame
    assert "done 12/18 · success 92.3% · 4.2/min · errors 1 · running 1" in frame
    # Events, newest first.
    ev = [line.split()[1] for line in lines if re.match(r"  \d\d:\d\d:\d\d ", line)]
    assert ev == ["TASK_FAILED", "AGENT_FAILED", "LEAD_ELECTED"]
    assert "scan 77777777 on charlie: timeout" in frame


def test_thirty_nodes_are_elided_with_a_count() -> None:
    peers = [_node(i, f"node-{i:02d}") for i in range(2, 31)]
    frame = render_frame(_status(peers), QUEUE, EVENTS, 80, 24, NOW, None)
    lines = _fits(frame, 80, 24)
    assert len(lines) == 24
    shown = [line for line in lines if re.match(r"[* ] (alpha|node-\d\d) ", line)]
    more = [int(m) for m in re.findall(r"^  … (\d+) more$", frame, re.M)]
    assert len(more) == 1 and len(shown) + more[0] == 30
    assert shown[0].startswith("* alpha") and len(shown) >= 5
    # The other sections keep their rows: all three queued tasks, all three events.
    assert "22222222" in frame and "11111111" in frame and "TASK_FAILED" in frame
    assert "-/min" in frame  # no rate yet


def test_no_lead_shows_the_reason() -> None:
    frame = render_frame(_status([_node(2, "bravo")], lead=None), [], [], 80, 24, NOW, 0.0)
    lines = _fits(frame, 80, 24)
    assert "no lead: no quorum" in lines[0] and "term" not in lines[0]
    assert "  … 3 more" in frame  # none fetched, but the totals say 3 wait
    empty = _status([_node(2, "bravo")], lead=None)
    empty["tasks"]["totals"].update(pending=0, retry=0, waiting_approval=0)
    assert "(no task waiting)" in render_frame(empty, [], [], 80, 24, NOW, None)
    assert "  (none)" in frame and "0.0/min" in frame


def test_any_size_fits_and_names_cannot_inject_escapes() -> None:
    evil = _node(2, "ev\x1b[2Jil\x07", task=dict(SLEEPING, message="\x1b]0;pwned\x07"), tasks=3)
    peers = [evil] + [_node(i, f"n{i}") for i in range(3, 12)]
    status = _status(peers)
    for width in (1, 10, 20, 33, 40, 59, 80, 132):
        for height in (1, 2, 5, 8, 12, 24, 50):
            frame = render_frame(status, QUEUE, EVENTS, width, height, NOW, 1.0)
            _fits(frame, width, height)
    frame = render_frame(status, QUEUE, EVENTS, 80, 24, NOW, 1.0)
    assert "ev?[2Jil?" in frame and "?]0;pwned?" in frame


def test_throughput_is_smoothed_completions_per_minute() -> None:
    rate = Throughput(tau=10.0)
    assert rate.update(0, 0.0) is None
    assert rate.update(5, 0.1) is None  # too short a span: merged with the next
    assert rate.update(10, 1.0) == pytest.approx(600.0)
    for t in range(2, 120):
        rate.update(10 + (t - 1), float(t))  # then one per second
    assert rate.rate == pytest.approx(60.0, rel=0.01)
    # A drop (say, tasks forgotten) counts as no completion, never as a negative rate.
    assert rate.update(0, 121.0) == pytest.approx(60.0 * math.exp(-0.2), rel=0.01)


def test_paint_never_scrolls_or_wraps() -> None:
    frame = "x" * 80 + "\nshort"
    for note in ("", "meshctl: slow (retrying)"):
        out = paint(frame, 80, 4, note)
        screen = Screen(4, 80)
        screen.feed(out)
        assert screen.overflow == 0 and screen.scrolled == 0
        assert screen.lines()[0] == "x" * 80 and screen.lines()[1] == "short"
        assert screen.lines()[3] == note


# --- a terminal model ------------------------------------------------------------------------
class Screen:
    """Enough of a VT100 for our output: CUP/home, ED, EL, CR, LF, SGR/modes ignored."""

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.grid = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.overflow = 0  # characters that would have wrapped to the next line
        self.scrolled = 0  # newlines on the last row
        self.alternate = False

    def feed(self, text: str) -> None:
        for m in CSI.finditer(text):
            tok = m.group(0)
            if m.group(2):
                self._csi(m.group(1), m.group(2))
            elif tok == "\r":
                self.col = 0
            elif tok == "\n":
                if self.row == self.rows - 1:
                    self.scrolled += 1
                    self.grid = [*self.grid[1:], [" "] * self.cols]
                else:
                    self.row += 1
            elif tok == "\x1b":
                continue
            elif self.col >= self.cols:
                self.overflow += 1
            else:
                self.grid[self.row][self.col] = tok
                self.col += 1

    def _csi(self, params: str, op: str) -> None:
        if params.startswith("?"):
            if params == "?1049":
                self.alternate = op == "h"
            return
        nums = [int(p) if p else 0 for p in params.split(";")] if params else []
        if op == "H":
            self.row = min(self.rows, max(1, nums[0] if nums else 1)) - 1
            self.col = min(self.cols, max(1, nums[1] if len(nums) > 1 else 1)) - 1
        elif op == "J":
            mode = nums[0] if nums else 0
            if mode == 2:
                self.grid = [[" "] * self.cols for _ in range(self.rows)]
            elif mode == 0:
                self.grid[self.row][self.col :] = [" "] * (self.cols - self.col)
                for r in range(self.row + 1, self.rows):
                    self.grid[r] = [" "] * self.cols
        elif op == "K":
            self.grid[self.row][self.col :] = [" "] * (self.cols - self.col)

    def lines(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.grid]

    def text(self) -> str:
        return "\n".join(self.lines())


# --- the live dashboard in a pseudo-terminal ------------------------------------------------
def start(mesh: Mesh, roles: list[tuple[str, str]]) -> list[Daemon]:
    """As in test_delegation_processes: the first is the seed; waits for one lead."""
    name, role = roles[0]
    first = mesh.add(name, role=role).start()
    first.wait_ready()
    nodes = [first] + [mesh.add(n, role=r, peers=(first.seed,)).start() for n, r in roles[1:]]
    for d in nodes:
        d.wait_ready()
    wait_for(lambda: all_see_all(nodes), what="mesh to form")
    wait_for(
        lambda: (
            len({(d.status()["lead"] or {}).get("id") for d in nodes} - {None}) == 1
            and all(d.status()["lead"] for d in nodes)
        ),
        what="one lead agreed by all",
    )
    return nodes


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 3-node mesh with a 60 s ``sleep`` running on a network-admin, with progress."""
    mesh = Mesh(tmp_path_factory.mktemp("top"))
    try:
        nodes = start(
            mesh, [("alpha", "team-lead"), ("bravo", "network-admin"), ("charlie", "network-admin")]
        )
        a = nodes[0]
        with a.client() as client:
            handle = client.delegate("sleep", {"seconds": 60, "step": 0.1}, role="network-admin")
            view = wait_for(
                lambda: (
                    (v := client.task(handle.task_id))["state"] == "running"
                    and v["progress"]["pct"] > 0
                    and v
                ),
                what="the sleep to run with progress",
            )
            # Every node's status shows it (the copies reach the other members).
            wait_for(lambda: any(p["task"] for p in a.status()["peers"]), what="status task")
        lead = a.status()["lead"]
        yield {"mesh": mesh, "nodes": nodes, "task": view, "lead": lead}
        try:
            with a.client() as client:
                client.cancel(handle.task_id)
        except Exception:
            pass
    finally:
        mesh.close()


class Pty:
    """``meshctl --state-dir DIR top ...`` on the slave side of a fresh pty (its
    controlling terminal, so Ctrl-C there is a SIGINT), read from the master side."""

    def __init__(self, state_dir: Path, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.modes_before = termios.tcgetattr(self.slave)
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SHIM, "--state-dir", str(state_dir), "top", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        self.raw = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    @property
    def out(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def read_until(self, pred: Callable[[str], bool], timeout: float = 10.0) -> bool:
        """Read for up to ``timeout`` s, until ``pred(output so far)``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.raw += os.read(self.master, 65536)
                except OSError:
                    break
                if pred(self.out):
                    return True
            elif self.proc.poll() is not None:
                break
        return pred(self.out)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 5.0) -> int | None:
        """The exit code once it exited (draining the output meanwhile), None if not."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read_until(lambda _: False, 0.1)
            code = self.proc.poll()
            if code is not None:
                self.read_until(lambda _: False, 0.2)
                return code
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)

    def frames(self) -> list[str]:
        """The complete frames written so far."""
        return re.findall(r"\x1b\[\?2026h(.*?)\x1b\[\?2026l", self.out, re.S)

    def screen(self, rows: int = 24, cols: int = 80, last: int = 0) -> Screen:
        """The screen after the frames (or only the last ``last`` ones)."""
        screen = Screen(rows, cols)
        frames = self.frames()
        for frame in frames[-last:] if last else frames:
            screen.feed(frame)
        return screen


def _dashboard_ready(names: list[str], task: bool = True) -> Callable[[str], bool]:
    def ready(out: str) -> bool:
        frames = re.findall(r"\x1b\[\?2026h(.*?)\x1b\[\?2026l", out, re.S)
        if not frames:
            return False
        screen = Screen(24, 80)
        screen.feed(frames[-1])
        text = screen.text()
        return all(n in text for n in names) and ("sleep [" in text or not task)

    return ready


@pytest.mark.integration
def test_live_dashboard_in_a_pty_then_q(live: dict[str, Any]) -> None:
    a = live["nodes"][0]
    names = [d.name for d in live["nodes"]]
    pty = Pty(a.state_dir, "--interval", "0.2")
    try:
        assert pty.read_until(_dashboard_ready(names)), pty.out[-3000:]
        screen = pty.screen()
        text = screen.text()
        assert screen.overflow == 0 and screen.scrolled == 0, text
        assert all(len(line) <= 80 for line in screen.lines())
        lead = live["lead"]
        assert re.search(rf"lead {lead['name']} \(term \d+\)", screen.lines()[0]), text
        worker = live["task"]["assigned_name"]
        assert re.search(rf"  {worker} +network-admin +alive +1 sleep \[[#.]+\] +\d+%", text)
        assert re.search(r"\* alpha +team-lead", text)
        assert "done 0/1" in text and "running 1" in text
        # Plain text once the escapes are stripped, and no line past 80 columns (the
        # pty's ONLCR made every "\r\n" a "\r\r\n").
        for frame in pty.frames():
            body = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame)
            assert all(len(line) <= 80 for line in re.split(r"\r*\n", body)), body
        assert pty.out.startswith(ENTER)
        # In cbreak mode while it runs: no echo, no line buffering.
        lflag = termios.tcgetattr(pty.slave)[3]
        assert not lflag & (termios.ICANON | termios.ECHO)

        # A resize (SIGWINCH) is followed: the next frames fit 60x20.
        mark = len(pty.frames())
        pty.resize(20, 60)
        pty.read_until(lambda out: len(pty.frames()) >= mark + 4)
        small = pty.screen(20, 60, last=1)
        assert small.overflow == 0 and small.scrolled == 0, small.text()
        assert "alpha" in small.text() and "sleep" in small.text()

        pty.send(b"q")
        assert pty.wait(5.0) == 0, pty.out[-2000:]
        assert pty.out.endswith(LEAVE), repr(pty.out[-200:])
        assert termios.tcgetattr(pty.slave) == pty.modes_before
    finally:
        pty.close()


@pytest.mark.integration
def test_ctrl_c_exits_0_and_restores_the_terminal(live: dict[str, Any]) -> None:
    a = live["nodes"][0]
    pty = Pty(a.state_dir, "--interval", "0.2")
    try:
        assert pty.read_until(_dashboard_ready([a.name])), pty.out[-3000:]
        assert termios.tcgetattr(pty.slave) != pty.modes_before  # cbreak
        pty.send(b"\x03")  # the line discipline turns it into SIGINT
        assert pty.wait(5.0) == 0, pty.out[-2000:]
        out = pty.out
        assert out.rindex("\x1b[?1049l") > out.rindex("\x1b[?1049h")  # main screen back
        assert out.rindex("\x1b[?25h") > out.rindex("\x1b[?25l")  # cursor shown
        assert "Traceback" not in out and "Aborted" not in out
        assert termios.tcgetattr(pty.slave) == pty.modes_before
    finally:
        pty.close()


def _meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "LINES": "24"}
    return subprocess.run(
        [sys.executable, "-c", SHIM, *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env=env,
    )


@pytest.mark.integration
def test_not_a_tty_prints_one_plain_frame(live: dict[str, Any]) -> None:
    a = live["nodes"][0]
    out = _meshctl("--state-dir", str(a.state_dir), "top")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout
    lines = out.stdout.rstrip("\n").split("\n")
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), out.stdout
    assert all(d.name in out.stdout for d in live["nodes"]) and "sleep [" in out.stdout
    assert "q quit" not in out.stdout


@pytest.mark.integration
def test_no_daemon_is_one_line_and_exit_3(tmp_path: Path) -> None:
    out = _meshctl("--state-dir", str(tmp_path / "nothing"), "top", "--once")
    assert out.returncode == 3
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "meshd is not running" in lines[0], out.stderr


@pytest.mark.integration
def test_daemon_gone_mid_session_exits_3_with_the_terminal_restored(mesh: Mesh) -> None:
    (solo,) = start(mesh, [("solo", "team-lead")])
    pty = Pty(solo.state_dir, "--interval", "0.2")
    try:
        assert pty.read_until(_dashboard_ready(["solo"], task=False), 10.0), pty.out[-3000:]
        pty.send(b"\x1a")  # Ctrl-Z: leaves the screen, stops (unless orphaned), comes back
        assert pty.read_until(lambda out: out.count(ENTER) >= 2, 5.0), pty.out[-500:]
        assert solo.stop() == 0
        assert pty.wait(10.0) == 3, pty.out[-2000:]
        out = pty.out
        assert out.rindex("\x1b[?1049l") > out.rindex("\x1b[?1049h")
        tail = out[out.rindex(LEAVE) + len(LEAVE) :].strip().splitlines()
        assert len(tail) == 1 and tail[0].startswith("meshctl: error:"), tail
        assert "Traceback" not in out
        assert termios.tcgetattr(pty.slave) == pty.modes_before
    finally:
        pty.close()
