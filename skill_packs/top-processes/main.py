"""top-processes: the processes using the most CPU or memory, from ``/proc``.

Reads ``/proc/<pid>/stat`` of every process twice, ``interval`` seconds apart; percent
CPU is the CPU time used in between over the interval (a process busy on two CPUs shows
200). With ``interval = 0`` it is the average over the process's lifetime instead. RSS is
resident memory in bytes, ``mem_percent`` its share of ``MemTotal``. A process that
exits during the sample is left out.
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path
from typing import Any

try:
    from meshd.skill import SkillFailure
except ImportError:  # meshd.skill not there yet: same signature

    class SkillFailure(Exception):  # type: ignore[no-redef]
        """A failure the skill understands: a short stable ``code`` and a message."""

        def __init__(self, code: str, message: str) -> None:
            super().__init__(f"{code}: {message}")
            self.code = code
            self.message = message


PROC = Path("/proc")
CMDLINE_CHARS = 160
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parse_stat(text: str) -> dict[str, Any]:
    """The fields of one ``/proc/<pid>/stat`` line this skill uses. The name (``comm``)
    is between the first ``(`` and the *last* ``)``: it may hold spaces and parentheses."""
    open_at, close_at = text.index("("), text.rindex(")")
    rest = text[close_at + 2 :].split()
    return {
        "pid": int(text[:open_at]),
        "name": text[open_at + 1 : close_at],
        "state": rest[0],
        "ppid": int(rest[1]),
        "ticks": int(rest[11]) + int(rest[12]),  # utime + stime
        "threads": int(rest[17]),
        "start_ticks": int(rest[19]),
        "rss": int(rest[21]) * PAGE_SIZE,
    }


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # gone, or hidden (hidepid)
        return None


def snapshot(proc: Path = PROC) -> dict[int, dict[str, Any]]:
    """Every readable process's stat fields, by pid."""
    out: dict[int, dict[str, Any]] = {}
    try:
        entries = os.listdir(proc)
    except OSError as exc:
        raise SkillFailure("unavailable", f"cannot list {proc}: {exc.strerror}") from None
    for entry in entries:
        if not entry.isdigit():
            continue
        text = _read(proc / entry / "stat")
        if text is None:
            continue
        try:
            out[int(entry)] = parse_stat(text)
        except (ValueError, IndexError):
            continue
    return out


def _user(uid: int, cache: dict[int, str]) -> str:
    if uid not in cache:
        try:
            cache[uid] = pwd.getpwuid(uid).pw_name
        except (KeyError, OSError):
            cache[uid] = str(uid)
    return cache[uid]


def _mem_total(proc: Path) -> int | None:
    for line in (_read(proc / "meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def _uptime(proc: Path) -> float | None:
    try:
        return float((_read(proc / "uptime") or "").split()[0])
    except (IndexError, ValueError):
        return None


def top(n: int, sort: str, interval: float, proc: Path = PROC) -> dict[str, Any]:
    first = snapshot(proc)
    started = time.monotonic()
    if interval > 0:
        time.sleep(interval)
    second = snapshot(proc)
    elapsed = time.monotonic() - started
    uptime = _uptime(proc)
    mem_total = _mem_total(proc)

    rows = []
    for pid, now in second.items():
        cpu_time = now["ticks"] / CLK_TCK
        if interval > 0:
            before = first.get(pid)
            if before is None or before["start_ticks"] != now["start_ticks"]:
                continue  # started during the sample (or a reused pid)
            cpu = 100.0 * (now["ticks"] - before["ticks"]) / CLK_TCK / max(elapsed, 1e-6)
        else:
            age = (uptime - now["start_ticks"] / CLK_TCK) if uptime is not None else 0.0
            cpu = 100.0 * cpu_time / age if age > 0 else 0.0
        rows.append((pid, now, cpu, cpu_time))

    if sort == "mem":
        rows.sort(key=lambda r: (r[1]["rss"], r[2]), reverse=True)
    else:
        rows.sort(key=lambda r: (r[2], r[3]), reverse=True)

    users: dict[int, str] = {}
    out = []
    for pid, st, cpu, cpu_time in rows[:n]:
        try:
            uid: int | None = os.stat(proc / str(pid)).st_uid
        except OSError:
            uid = None
        raw = _read(proc / str(pid) / "cmdline") or ""
        cmdline = raw.replace("\0", " ").strip()[:CMDLINE_CHARS]
        out.append(
            {
                "pid": pid,
                "ppid": st["ppid"],
                "name": st["name"],
                "user": _user(uid, users) if uid is not None else None,
                "uid": uid,
                "state": st["state"],
                "threads": st["threads"],
                "rss": st["rss"],
                "mem_percent": round(100.0 * st["rss"] / mem_total, 2) if mem_total else None,
                "cpu_time_s": round(cpu_time, 2),
                "cpu_percent": round(cpu, 1),
                "cmdline": cmdline,
            }
        )
    return {
        "sort": sort,
        "interval": interval,
        "total_processes": len(second),
        "memory_total": mem_total,
        "processes": out,
    }


def run(ctx: Any) -> dict[str, Any]:
    params = ctx.params
    n = int(params.get("n", 10))
    sort = str(params.get("sort", "cpu")).strip().lower()
    interval = float(params.get("interval", 0.5))
    if sort not in ("cpu", "mem"):
        raise SkillFailure("bad_params", f"sort must be cpu or mem, not {sort!r}")
    if n < 1 or not 0 <= interval <= 5:
        raise SkillFailure("bad_params", "n must be >= 1 and interval 0..5 s")
    ctx.progress(0.0, f"sampling for {interval:g} s")
    result = top(n, sort, interval)
    ctx.progress(100.0, f"{len(result['processes'])} of {result['total_processes']} processes")
    return result
