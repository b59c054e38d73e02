"""service-status: the state of some systemd units.

Asks ``systemctl show`` for all the units at once (``--property=...``, one block per
unit; :func:`parse_show` reads it) and falls back on ``systemctl is-active`` per unit if
``show`` fails for another reason than systemd being unreachable. On a host where
systemctl is missing, or systemd is not the init system (no ``/run/systemd/system``), or
its bus cannot be reached, each service is reported with ``status: "unknown"`` and
``error: "systemctl unavailable: <why>"``: the skill itself does not fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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


MAX_NAMES = 64
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Exists when systemd is the init system (what sd_booted() checks).
BOOTED_DIR = "/run/systemd/system"
TIMEOUT = 15.0
PROPERTIES = (
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "ActiveEnterTimestamp",
    "NRestarts",
)
UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".mount",
    ".automount",
    ".path",
    ".slice",
    ".scope",
    ".device",
    ".swap",
)
_UNIT = re.compile(r"^[A-Za-z0-9_.:@\\-]{1,255}$")
_UNREACHABLE = (
    "failed to connect to bus",
    "not been booted with systemd",
    "failed to get d-bus connection",
    "host is down",
)


def unit_name(name: str) -> str:
    """``name`` as a full unit name (``.service`` added when it has no unit suffix);
    :class:`SkillFailure` ``bad_params`` for anything that is not a unit name."""
    text = name.strip()
    if not _UNIT.match(text) or text.startswith("-") or text.startswith("."):
        raise SkillFailure("bad_params", f"{name!r} is not a unit name")
    return text if text.endswith(UNIT_SUFFIXES) else text + ".service"


def parse_show(text: str) -> list[dict[str, str]]:
    """``systemctl show`` output: one ``Key=Value`` block per unit, blank lines between."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def entry_from_show(name: str, unit: str, props: dict[str, str]) -> dict[str, Any]:
    load = props.get("LoadState") or None
    active = props.get("ActiveState") or "unknown"
    pid = _int(props.get("MainPID"))
    return {
        "name": name,
        "unit": props.get("Id") or unit,
        "status": "not-found" if load == "not-found" else active,
        "sub_state": props.get("SubState") or None,
        "load_state": load,
        "unit_file_state": props.get("UnitFileState") or None,
        "description": props.get("Description") or None,
        "main_pid": pid or None,
        "since": props.get("ActiveEnterTimestamp") or None,
        "restarts": _int(props.get("NRestarts")),
        "error": None,
    }


def _unknown(name: str, unit: str, error: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "unit": unit,
        "status": "unknown",
        "sub_state": None,
        "load_state": None,
        "unit_file_state": None,
        "description": None,
        "main_pid": None,
        "since": None,
        "restarts": None,
        "error": error,
    }


def _systemctl(exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
        "SYSTEMD_PAGER": "",
        "SYSTEMD_COLORS": "0",
    }
    return subprocess.run(
        [exe, "--no-pager", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )


def systemctl_problem(exe: str | None, booted_dir: str = BOOTED_DIR) -> str | None:
    """Why systemctl cannot answer here, or None when it should."""
    if exe is None:
        return "systemctl unavailable: systemctl is not installed"
    if not os.path.isdir(booted_dir):
        return "systemctl unavailable: systemd is not the init system here"
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def statuses(
    names: list[str], exe: str | None, booted_dir: str = BOOTED_DIR
) -> tuple[list[dict[str, Any]], str | None]:
    """One entry per name, in order, and why systemctl was unavailable (or None).
    ``exe``: the systemctl to run; ``booted_dir`` exists when systemd is PID 1."""
    pairs = [(n, unit_name(n)) for n in names]
    problem = systemctl_problem(exe, booted_dir)
    if problem is None and exe is not None:
        units = [u for _, u in pairs]
        try:
            done = _systemctl(exe, "show", "--property=" + ",".join(PROPERTIES), "--", *units)
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"systemctl unavailable: {exc}"
        else:
            blocks = parse_show(done.stdout)
            if done.returncode == 0 and len(blocks) == len(pairs):
                return [
                    entry_from_show(n, u, b) for (n, u), b in zip(pairs, blocks, strict=True)
                ], None
            why = _first_line(done.stderr) or f"systemctl show exited {done.returncode}"
            if any(s in why.lower() for s in _UNREACHABLE):
                problem = f"systemctl unavailable: {why}"
            else:
                return [_is_active(exe, n, u) for n, u in pairs], None
    problem = problem or "systemctl unavailable"
    return [_unknown(n, u, problem) for n, u in pairs], problem


def _is_active(exe: str, name: str, unit: str) -> dict[str, Any]:
    try:
        done = _systemctl(exe, "is-active", "--", unit)
    except (OSError, subprocess.SubprocessError) as exc:
        return _unknown(name, unit, f"systemctl is-active: {exc}")
    state = _first_line(done.stdout)
    if not state:
        return _unknown(name, unit, _first_line(done.stderr) or "no answer from systemctl")
    entry = _unknown(name, unit, None)
    entry["status"] = state
    return entry


def run(ctx: Any) -> dict[str, Any]:
    names = ctx.params["names"]
    if isinstance(names, str):
        names = [names]
    names = [str(n) for n in names]
    if not 1 <= len(names) <= MAX_NAMES:
        raise SkillFailure("bad_params", f"give 1 to {MAX_NAMES} service names")
    ctx.progress(0.0, f"{len(names)} service(s)")
    search = os.pathsep.join([os.environ.get("PATH", ""), SYSTEM_PATH])
    services, problem = statuses(names, shutil.which("systemctl", path=search))
    ctx.progress(100.0, problem or "done")
    return {
        "systemctl": problem is None,
        "error": problem,
        "services": services,
        "active": [s["name"] for s in services if s["status"] == "active"],
        "not_active": [s["name"] for s in services if s["status"] != "active"],
    }
