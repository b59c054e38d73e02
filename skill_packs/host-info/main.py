"""host-info: facts about this host, from ``/proc``, ``/etc/os-release`` and ``platform``.

Keys of the result (:data:`KEYS`; a value is None where the host does not say):
``hostname``, ``os`` (``name``, ``id``, ``version_id``, ``pretty_name`` from
os-release), ``kernel`` (``release``, ``version``), ``machine``, ``cpu_model``,
``cpu_count`` (logical CPUs), ``cpu_usable`` (those this process may run on),
``memory_total``, ``memory_available``, ``swap_total``, ``swap_free`` (bytes),
``load_avg`` (1, 5, 15 min), ``uptime_s``, ``boot_time`` (Unix time), ``python``
(``version``, ``implementation``, ``executable``) and ``time`` (Unix time now).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

PROC = Path("/proc")
OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))

KEYS = (
    "hostname",
    "os",
    "kernel",
    "machine",
    "cpu_model",
    "cpu_count",
    "cpu_usable",
    "memory_total",
    "memory_available",
    "swap_total",
    "swap_free",
    "load_avg",
    "uptime_s",
    "boot_time",
    "python",
    "time",
)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def parse_os_release(text: str) -> dict[str, str]:
    """``KEY=value`` lines of os-release, quotes removed."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            out[key] = value
    return out


def parse_cpu_model(text: str) -> str | None:
    """The CPU model from ``/proc/cpuinfo`` (x86 ``model name``; ARM ``Hardware`` or
    ``Model``; else ``cpu model``/``Processor``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and value.strip() and key not in fields:
            fields[key] = value.strip()
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor", "cpu"):
        if key in fields:
            return fields[key]
    return None


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` values in bytes, by name."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        out[key.strip()] = value * 1024 if len(parts) > 1 and parts[1].lower() == "kb" else value
    return out


def host_info(proc: Path = PROC) -> dict[str, Any]:
    release: dict[str, str] = {}
    for path in OS_RELEASE:
        text = _read(path)
        if text is not None:
            release = parse_os_release(text)
            break
    mem = parse_meminfo(_read(proc / "meminfo") or "")
    try:
        uptime: float | None = float((_read(proc / "uptime") or "").split()[0])
    except (IndexError, ValueError):
        uptime = None
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    now = time.time()
    uname = platform.uname()
    return {
        "hostname": socket.gethostname(),
        "os": {
            "name": release.get("NAME") or uname.system,
            "id": release.get("ID"),
            "version_id": release.get("VERSION_ID"),
            "pretty_name": release.get("PRETTY_NAME"),
        },
        "kernel": {"release": uname.release, "version": uname.version},
        "machine": uname.machine,
        "cpu_model": parse_cpu_model(_read(proc / "cpuinfo") or ""),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "memory_total": mem.get("MemTotal"),
        "memory_available": mem.get("MemAvailable"),
        "swap_total": mem.get("SwapTotal"),
        "swap_free": mem.get("SwapFree"),
        "load_avg": load,
        "uptime_s": round(uptime, 2) if uptime is not None else None,
        "boot_time": round(now - uptime) if uptime is not None else None,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "time": round(now, 3),
    }


def run(ctx: Any) -> dict[str, Any]:
    ctx.progress(0.0, "reading host facts")
    info = host_info()
    ctx.progress(100.0, "done")
    return info
