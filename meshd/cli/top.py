"""``meshctl top``: a live dashboard of the mesh, refreshed in place (plain ANSI, no curses).

Header (mesh, nodes by state, lead and term or why there is none, clock), the agents (self
first: role, state, current task with a progress bar, tasks held), the queue (pending, retry
and waiting-for-approval tasks by priority, then age, and why each waits), the totals (done,
success rate, throughput, errors) and the last few notable events. Everything fits the
terminal, re-measured every frame; what does not fit is elided as ``… N more``.

Keys: ``q`` (or Ctrl-C) quits, with exit code 0; any other key redraws at once. The terminal
is put in cbreak mode on the alternate screen with the cursor hidden, and always restored.
When stdout is not a terminal (or with ``--once``) one frame is printed, without escapes.
Exit codes: 0 ok, 1 the daemon returned an error, 3 no daemon to talk to.

:func:`render_frame` builds a frame from plain data (a pure function, unit-tested); the rest
fetches the data and paints it. Only the standard library: ``meshctl`` must start fast.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import IO, Annotated, Any

import typer

from meshd import clock
from meshd.cli.common import EXIT_FAILURE, EXIT_NOT_RUNNING, MESHCTL_STATE, fail

#: Task states shown in the queue, and how many of each are fetched per refresh.
QUEUE_STATES = ("pending", "retry", "waiting_approval")
QUEUE_FETCH = 40
#: Events worth a line: task failures, lost agents, lead changes.
EVENT_TYPES = frozenset({"TASK_FAILED", "AGENT_FAILED", "STEPPED_DOWN"})
EVENTS_SHOWN = 3
#: Time constant (s) of the throughput's exponential smoothing.
RATE_TAU = 10.0

_STATE_ORDER = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
_ELL = "…"


# --- the frame (pure) -------------------------------------------------------------------
def render_frame(
    status: dict[str, Any],
    queue: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    width: int,
    height: int,
    now: float,
    rate: float | None,
    *,
    hint: bool = True,
) -> str:
    """One screen of ``meshctl top``: at most ``height`` lines of at most ``width``
    columns, joined by newlines, without escape sequences.

    ``status``: :meth:`Client.status`; ``queue``: waiting tasks (task views, any order);
    ``events``: notable events, oldest first (the last :data:`EVENTS_SHOWN` are shown);
    ``now``: wall clock (s); ``rate``: completed tasks per minute (None: not known yet);
    ``hint``: end with the key hint when there is room (not in a one-shot frame)."""
    width = max(1, width)
    height = max(1, height)
    me = status["self"]
    peers = list(status.get("peers") or [])
    lead = status.get("lead")
    lead_id = lead["id"] if lead else None
    names = {p["id"]: p["name"] for p in peers}
    names[me["id"]] = me["name"]
    tasks = status.get("tasks") or {}
    totals: dict[str, Any] = tasks.get("totals") or {}

    # Agents: self first, then the peers, alive ones first.
    nodes = [dict(me, state="alive", _self=True)]
    nodes += sorted(peers, key=lambda p: (_STATE_ORDER.get(p["state"], 9), p["name"], p["id"]))
    agent_head, agent_rows = _agents(nodes, lead_id, width)

    waiting = sorted(queue, key=lambda t: (-int(t.get("priority", 0)), t.get("created_at", 0)))
    queue_total = max(len(waiting), sum(int(totals.get(s, 0)) for s in QUEUE_STATES))
    queue_head, queue_rows = _queue(waiting, width, now)

    recent = [_event_line(e, names) for e in reversed(events[-EVENTS_SHOWN:])]

    # Rows: the headings first; then a few rows of each section; blank separators; then
    # up to 5 queue rows, the agents, the rest of the queue; a key hint if room is left.
    budget = height - 5
    wants = [len(agent_rows), max(1, min(queue_total, len(queue_rows) + 1)), max(1, len(recent))]
    got = [0, 0, 0]
    for i, floor in ((0, 3), (1, 2), (2, EVENTS_SHOWN)):
        take = max(0, min(wants[i], floor, budget))
        got[i] += take
        budget -= take
    blanks = max(0, min(3, budget))
    budget -= blanks
    for i, upto in ((1, 5), (0, wants[0]), (1, wants[1])):
        take = max(0, min(upto - got[i], wants[i] - got[i], budget))
        got[i] += take
        budget -= take
    hint = hint and budget > 0

    lines = [_header(status, now, width)]
    if blanks >= 1:
        lines.append("")
    lines.append(agent_head)
    lines += _elide(agent_rows, len(agent_rows), got[0])
    if blanks >= 2:
        lines.append("")
    lines.append(queue_head)
    if queue_total:
        lines += _elide(queue_rows, queue_total, got[1])
    elif got[1]:
        lines.append("  (no task waiting)")
    if blanks >= 3:
        lines.append("")
    lines.append(_totals(totals, rate))
    lines.append("EVENTS")
    lines += recent[: got[2]] if recent else ["  (none)"][: got[2]]
    if hint:
        lines.append("q quit")
    return "\n".join(_clip(line, width) for line in lines[:height])


def _header(status: dict[str, Any], now: float, width: int) -> str:
    me = status["self"]
    counts = status.get("counts") or {}
    total = int(counts.get("total", len(status.get("peers") or []) + 1))
    by_state = [f"{int(counts.get('alive', 0)) + 1} alive"]
    by_state += [f"{counts[s]} {s}" for s in ("suspect", "dead", "left") if counts.get(s)]
    lead = status.get("lead")
    if lead:
        lead_text = f"lead {_safe(lead['name'])} (term {lead['term']})"
    else:
        reason = str(status.get("lead_reason") or "no lead")
        lead_text = reason if reason.startswith("no lead") else f"no lead: {reason}"
    nodes = f"{total} node{'' if total == 1 else 's'}"
    mesh = f"mesh {_safe(str(me.get('mesh_id', '?')))}"
    lead_text = _safe(lead_text)
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    room = width - len(stamp) - 1 if width >= len(stamp) + 20 else width
    # Narrow: the mesh id goes first, then the counts by state; the lead stays.
    for parts in (
        (mesh, f"{nodes} ({', '.join(by_state)})", lead_text),
        (f"{nodes} ({', '.join(by_state)})", lead_text),
        (nodes, lead_text),
    ):
        left = " · ".join(parts)
        if len(left) <= room:
            break
    if room == width:
        return _clip(left, width)
    return _clip(left, room).ljust(width - len(stamp)) + stamp


def _agents(nodes: list[dict[str, Any]], lead_id: str | None, width: int) -> tuple[str, list[str]]:
    """The agents' heading and rows: AGENT ROLE STATE HELD TASK (TASK takes what is left)."""
    cells = []
    for n in nodes:
        state = str(n.get("state", "?"))
        if n["id"] == lead_id and state == "alive":
            state = "lead"
        cells.append(
            (
                ("* " if n.get("_self") else "  ") + _safe(str(n["name"])),
                _safe(str(n.get("role", "-"))),
                state,
                str(int(n.get("tasks") or 0)),
                n.get("task"),
            )
        )
    name_w = min(18, max([7] + [len(c[0]) for c in cells]))
    role_w = min(14, max([4] + [len(c[1]) for c in cells]))
    state_w = max([5] + [len(c[2]) for c in cells])
    held_w = 4
    task_w = width - (name_w + role_w + state_w + held_w + 4)
    while task_w < 24 and (name_w > 8 or role_w > 6):  # narrow: give TASK room
        if role_w > 6:
            role_w -= 1
        else:
            name_w -= 1
        task_w += 1
    task_w = max(task_w, 1)

    def row(name: str, role: str, state: str, held: str, task: str) -> str:
        return " ".join(
            (
                _clip(name, name_w).ljust(name_w),
                _clip(role, role_w).ljust(role_w),
                _clip(state, state_w).ljust(state_w),
                held.rjust(held_w),
                _clip(task, task_w),
            )
        ).rstrip()

    head = row("  AGENT", "ROLE", "STATE", "HELD", "TASK")
    rows = [row(c[0], c[1], c[2], c[3], _task_cell(c[4], task_w)) for c in cells]
    return head, rows


def _task_cell(cur: dict[str, Any] | None, width: int) -> str:
    """``sleep [#####.....]  52% message``: the message goes first, then the bar shrinks,
    then the skill name is cut, to fit ``width``."""
    if not cur:
        return "-"
    skill = _safe(str(cur.get("skill", "?")))
    if cur.get("state") == "assigned":
        return _clip(f"{skill} (starting)", width)
    pct = max(0.0, min(100.0, float(cur.get("pct") or 0.0)))
    tail = f"{pct:3.0f}%"
    message = _safe(str(cur.get("message") or ""))
    for slots in (10, 8, 6, 4):
        skill_w = width - (slots + 2) - 1 - len(tail) - 1
        if skill_w >= min(len(skill), 6):
            filled = round(slots * pct / 100)
            bar = "[" + "#" * filled + "." * (slots - filled) + "]"
            cell = f"{_clip(skill, skill_w)} {bar} {tail}"
            room = width - len(cell) - 1
            if message and room >= 6:
                cell += " " + _clip(message, room)
            return cell
    return _clip(f"{skill} {tail}", width)


def _queue(waiting: list[dict[str, Any]], width: int, now: float) -> tuple[str, list[str]]:
    def row(tid: str, skill: str, pri: str, age: str, why: str) -> str:
        return _clip(f"  {tid:<8}  {_clip(skill, 14):<14} {pri:>3} {age:>5}  {why}", width)

    head = row("QUEUED", "SKILL", "PRI", "AGE", "WHY").rstrip()
    rows = [
        row(
            _safe(str(t["id"]))[:8],
            _safe(str(t.get("skill", "?"))),
            str(t.get("priority", "?")),
            _age(now - float(t.get("created_at") or now)),
            _safe(_why(t)),
        )
        for t in waiting
    ]
    return head, rows


def _why(t: dict[str, Any]) -> str:
    """Why a task waits: the daemon's own reason when it gives one, else from its fields."""
    for key in ("why_waiting", "waiting_reason", "why"):
        if t.get(key):
            return str(t[key])
    state = t.get("state")
    err = t.get("error") or {}
    if state == "waiting_approval":
        return f"needs approval (meshctl approve {str(t['id'])[:8]})"
    if state == "retry":
        why = f"retry {t.get('retry_count', '?')}/{t.get('retry_limit', '?')}"
        return why + (f" after {err['code']}" if err.get("code") else "")
    deps = t.get("depends_on") or []
    if deps:
        return "after " + ", ".join(str(d)[:8] for d in deps)
    req = t.get("requirement") or {}
    wanted = [f"{k} {req[k]}" for k in ("role", "capability", "node") if req.get(k)]
    history = t.get("history") or []
    last = str(history[-1].get("reason") or "") if history else ""
    if last and last not in ("submitted", "delegated"):
        wanted.append(last)
    return "; ".join(wanted) or "waiting for an agent"


def _totals(totals: dict[str, Any], rate: float | None) -> str:
    if not totals:
        return "TASKS  (no task figures)"
    done = int(totals.get("complete", 0)) + int(totals.get("verified", 0))
    success = totals.get("success_rate")
    running = int(totals.get("assigned", 0)) + int(totals.get("running", 0))
    parts = [
        f"done {done}/{int(totals.get('total', 0))}",
        "success " + ("-" if success is None else f"{100 * float(success):.1f}%"),
        ("-" if rate is None else f"{rate:.1f}") + "/min",
        f"errors {int(totals.get('failed', 0))}",
        f"running {running}",
    ]
    return "TASKS  " + " · ".join(parts)


def _event_line(e: dict[str, Any], names: dict[str, str]) -> str:
    kind = str(e.get("type", "?"))
    when = time.strftime("%H:%M:%S", time.localtime(float(e.get("at") or 0.0)))
    if kind == "TASK_FAILED":
        err = e.get("error") or {}
        node = e.get("node")
        where = f" on {names.get(node, str(node)[:8])}" if node else ""
        what = f"{e.get('skill', '?')} {str(e.get('task_id', ''))[:8]}{where}"
        detail = f"{what}: {err.get('code') or e.get('detail') or 'failed'}"
    elif kind.startswith("AGENT_"):
        detail = f"{e.get('name') or str(e.get('node', ''))[:8]} ({e.get('reason', '')})"
    else:  # LEAD_*, STEPPED_DOWN
        who = e.get("lead_name") or (str(e["lead"])[:8] if e.get("lead") else "-")
        detail = f"{who} term {e.get('term', '?')}: {e.get('reason', '')}"
    return f"  {when} {kind:<12} {_safe(detail)}"


def _elide(rows: list[str], total: int, room: int) -> list[str]:
    """``rows`` (of ``total`` items) in ``room`` lines, the last one ``… N more``
    when they do not all fit."""
    if room <= 0:
        return []
    if total <= room and len(rows) >= total:
        return rows[:total]
    shown = rows[: min(len(rows), room - 1)]
    return [*shown, f"  {_ELL} {total - len(shown)} more"]


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _safe(text: str) -> str:
    """Names and messages come from other hosts: no control characters (escape
    sequences) reach the terminal."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _clip(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + _ELL if width > 0 else ""


# --- the data -----------------------------------------------------------------------------
class Throughput:
    """Completed tasks per minute: the change of the completed count between refreshes,
    smoothed exponentially (time constant :data:`RATE_TAU`)."""

    def __init__(self, tau: float = RATE_TAU, min_dt: float = 0.5) -> None:
        self.tau = tau
        self.min_dt = min_dt  # shorter spans are merged with the next (less noise)
        self.rate: float | None = None
        self._last: tuple[float, int] | None = None

    def update(self, done: int, at: float) -> float | None:
        """Add a sample (completed count at monotonic time ``at``); the rate so far."""
        if self._last is not None:
            t0, d0 = self._last
            dt = at - t0
            if dt < self.min_dt:
                return self.rate
            instant = max(0, done - d0) * 60.0 / dt
            if self.rate is None:
                self.rate = instant
            else:
                alpha = 1.0 - math.exp(-dt / self.tau)
                self.rate += alpha * (instant - self.rate)
        self._last = (at, done)
        return self.rate


class Feed:
    """What one frame shows, fetched from the daemon; keeps the event cursor, the recent
    notable events and the throughput between refreshes."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.since = 0.0
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_SHOWN)
        self.throughput = Throughput()
        self.status: dict[str, Any] = {}
        self.queue: list[dict[str, Any]] = []
        self.rate: float | None = None

    def refresh(self) -> None:
        status: dict[str, Any] = self.client.status()
        totals = (status.get("tasks") or {}).get("totals") or {}
        queue: list[dict[str, Any]] = []
        for state in QUEUE_STATES:
            if totals.get(state, 1):  # skip a round trip when the totals say none
                queue += self.client.tasks(state, QUEUE_FETCH)
        for event in self.client.events(self.since):
            self.since = max(self.since, float(event.get("at") or 0.0))
            kind = str(event.get("type", ""))
            if kind in EVENT_TYPES or kind.startswith("LEAD_"):
                self.events.append(event)
        done = int(totals.get("complete", 0)) + int(totals.get("verified", 0))
        self.rate = self.throughput.update(done, clock.monotonic())
        self.status, self.queue = status, queue

    def frame(self, width: int, height: int, hint: bool = True) -> str:
        events = list(self.events)
        now = clock.wall()
        return render_frame(
            self.status, self.queue, events, width, height, now, self.rate, hint=hint
        )


# --- the terminal -------------------------------------------------------------------------
ENTER = "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J"  # alternate screen, hide the cursor, clear
LEAVE = "\x1b[?25h\x1b[?1049l"  # show the cursor, back to the main screen


def paint(text: str, width: int, height: int, note: str = "") -> str:
    """The escape sequences that draw ``text`` over the previous frame: every line padded
    to the full width (no erase-to-end, which eats the last column after a full line), no
    newline after the last row (no scroll), the header in reverse video, ``note`` on the
    last row; wrapped in a synchronized update where the terminal supports one."""
    lines = text.split("\n")[:height]
    if note:
        lines = lines[: height - 1] + [""] * max(0, height - 1 - len(lines)) + [note]
    out = ["\x1b[?2026h\x1b[H"]
    for i, line in enumerate(lines):
        body = _clip(line, width).ljust(width)
        if i == 0 or (note and i == len(lines) - 1):
            body = "\x1b[7m" + body + "\x1b[0m"
        out.append(body if i == 0 else "\r\n" + body)
    if len(lines) < height:
        out.append("\r\n\x1b[J")
    out.append("\x1b[?2026l")
    return "".join(out)


def run_live(feed: Feed, interval: float, stdin: IO[str], stdout: IO[str]) -> int:
    """Refresh until ``q``/Ctrl-C; the terminal is restored whatever happens."""
    import os
    import select
    import shutil
    import signal

    from meshd.errors import ControlError, DaemonNotRunning

    in_fd = stdin.fileno() if stdin.isatty() else -1
    saved: list[Any] | None = None
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = -1
    old_handlers: dict[int, Any] = {}
    old_int = signal.getsignal(signal.SIGINT)
    note = ""

    def enter() -> None:
        nonlocal saved
        if in_fd >= 0:
            import termios
            import tty

            if saved is None:
                saved = termios.tcgetattr(in_fd)
            tty.setcbreak(in_fd, termios.TCSANOW)
        stdout.write(ENTER)
        stdout.flush()

    def leave() -> None:
        try:
            stdout.write(LEAVE)
            stdout.flush()
        finally:
            if in_fd >= 0 and saved is not None:
                import termios

                termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)

    def on_tstp(signum: int, _frame: object) -> None:  # Ctrl-Z: restore, stop, come back
        leave()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, on_tstp)
        enter()

    def on_winch(signum: int, _frame: object) -> None:  # the wakeup fd redraws
        pass

    try:
        old_handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_winch)
        old_handlers[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, on_tstp)
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        enter()
        # The caller fetched the first frame (errors before the screen changes).
        next_fetch = clock.monotonic() + interval if feed.status else 0.0
        watch = [wake_r] + ([in_fd] if in_fd >= 0 else [])
        while True:
            if clock.monotonic() >= next_fetch:
                next_fetch = clock.monotonic() + interval
                try:
                    feed.refresh()
                    note = ""
                except DaemonNotRunning:
                    raise
                except ControlError as exc:  # e.g. a slow answer: keep the last frame
                    note = f"meshctl: {exc} (retrying)"
            width, height = shutil.get_terminal_size()
            stdout.write(paint(feed.frame(width, height), width, height, _safe(note)))
            stdout.flush()
            timeout = max(0.0, next_fetch - clock.monotonic())
            ready, _, _ = select.select(watch, [], [], timeout)
            if wake_r in ready:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            if in_fd in ready:
                keys = os.read(in_fd, 64)
                if not keys:  # EOF on the terminal: nothing more to read
                    watch.remove(in_fd)
                elif b"q" in keys or b"Q" in keys or b"\x03" in keys:
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: restore anyway
        try:
            leave()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGINT, old_int)
            os.close(wake_r)
            os.close(wake_w)


def run_top(state_dir: Any, interval: float, once: bool) -> int:
    import shutil

    from meshd.client import Client
    from meshd.errors import ControlError, DaemonNotRunning

    live = not once and sys.stdout.isatty()
    try:
        with Client(state_dir, timeout=5.0) as client:
            feed = Feed(client)
            feed.refresh()
            if not live:
                width, height = shutil.get_terminal_size()
                print(feed.frame(width, height, hint=False))
                return 0
            return run_live(feed, interval, sys.stdin, sys.stdout)
    except DaemonNotRunning as exc:
        fail("meshctl", str(exc), EXIT_NOT_RUNNING)
    except ControlError as exc:
        fail("meshctl", str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 0


def top(
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, max=3600, help="Refresh period (s).")
    ] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame and exit (also when not a TTY).")
    ] = False,
) -> None:
    """Live dashboard: agents and their tasks, the queue, totals and events (q quits)."""
    code = run_top(MESHCTL_STATE["dir"], interval, once)
    if code:
        raise SystemExit(code)
