"""Built-in skills that run in the daemon's process, and the :class:`Registry` of skills.

Until signed packs land (issue 5), every agent carries these:

- ``echo``: returns its message (the trivial skill of the delegation benchmarks);
- ``sleep``: waits, reporting progress and checkpointing the time slept, so a reassigned
  sleep only waits for the time that remains (the crash-and-resume tests use it);
- ``sysinfo``: host facts (name, platform, CPUs, load, memory, uptime).
"""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

from meshd.skills.api import Skill, SkillCancelled, SkillContext
from meshd.skills.spec import ParamSpec, SkillError, SkillSpec

BUILTIN_VERSION: Final = "1.0.0"


class Registry:
    """The skills a node can run, by name."""

    def __init__(self, skills: Iterable[Skill] = ()) -> None:
        self._skills: dict[str, Skill] = {}
        for skill in skills:
            self.register(skill)

    def register(self, skill: Skill) -> None:
        """Add ``skill``; raises :class:`SkillError` if its name is taken."""
        name = skill.spec.name
        if name in self._skills:
            raise SkillError(f"skill {name!r} is already registered", code="duplicate_skill")
        self._skills[name] = skill

    def put(self, skill: Skill) -> None:
        """Add ``skill``, replacing one of the same name (a newer pack version)."""
        self._skills[skill.spec.name] = skill

    def remove(self, name: str) -> bool:
        """Forget ``name``; False if it was not registered."""
        return self._skills.pop(name, None) is not None

    def get(self, name: str) -> Skill:
        """The skill called ``name``; raises :class:`SkillError` (``unknown_skill``)
        listing the known ones."""
        try:
            return self._skills[name]
        except KeyError:
            known = ", ".join(sorted(self._skills)) or "none"
            raise SkillError(
                f"unknown skill {name!r}; known: {known}", code="unknown_skill"
            ) from None

    def names(self) -> tuple[str, ...]:
        """Registered skill names, sorted."""
        return tuple(sorted(self._skills))

    def specs(self) -> tuple[SkillSpec, ...]:
        """Registered skills' specs, sorted by name."""
        return tuple(self._skills[n].spec for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._skills

    def __iter__(self) -> Iterator[Skill]:
        return iter([self._skills[n] for n in self.names()])

    def __len__(self) -> int:
        return len(self._skills)


class Echo:
    """``echo message=...`` -> ``{"message": ...}``."""

    spec = SkillSpec(
        name="echo",
        description="Return the message it is given (for tests and round-trip benchmarks).",
        version=BUILTIN_VERSION,
        params=(ParamSpec("message", "str", "Text to send back.", required=True),),
        idempotent=True,
    )

    async def run(self, ctx: SkillContext) -> object:
        return {"message": ctx.params["message"]}

    @staticmethod
    def verify(params: Mapping[str, object], result: object) -> bool:
        """The verify step: the result echoes the message it was given."""
        return isinstance(result, dict) and result.get("message") == params.get("message")


def encode_elapsed(seconds: float) -> bytes:
    """The ``sleep`` checkpoint: seconds already slept, as ASCII text."""
    return repr(float(seconds)).encode("ascii")


def decode_elapsed(data: bytes | None) -> float:
    """Seconds already slept from a ``sleep`` checkpoint; 0 for none or an unreadable
    one (sleep is idempotent: starting over is always safe)."""
    if not data:
        return 0.0
    try:
        value = float(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0


class Sleep:
    """``sleep seconds=S [step=T]``: wait S seconds in steps of T, reporting progress and
    checkpointing the time slept after every step. Resumed from a checkpoint it sleeps only
    the time that remains. Stops within one event-loop turn of a cancel.

    The time slept is counted step by step rather than read from a clock, so a resumed
    run's total is exact and tests need no real clock."""

    spec = SkillSpec(
        name="sleep",
        description="Wait a number of seconds, reporting progress; resumes from a checkpoint.",
        version=BUILTIN_VERSION,
        params=(
            ParamSpec(
                "seconds", "float", "How long to wait (s).", required=True, minimum=0, maximum=3600
            ),
            ParamSpec(
                "step",
                "float",
                "Progress and checkpoint interval (s).",
                default=0.1,
                minimum=0.001,
                maximum=3600,
            ),
        ),
        idempotent=True,
    )

    async def run(self, ctx: SkillContext) -> object:
        total = float(ctx.params["seconds"])  # type: ignore[arg-type]
        step = float(ctx.params.get("step", 0.1))  # type: ignore[arg-type]
        start = min(decode_elapsed(ctx.checkpoint_data), total)
        elapsed = start
        while elapsed < total:
            chunk = min(step, total - elapsed)
            if not await ctx.sleep(chunk):
                raise SkillCancelled(f"cancelled after {elapsed:g} of {total:g} s")
            elapsed = min(total, elapsed + chunk)
            ctx.checkpoint(encode_elapsed(elapsed))
            ctx.progress(100.0 * elapsed / total, f"{elapsed:.2f}/{total:g} s")
        if total == 0:
            ctx.progress(100.0, "0/0 s")
        return {"slept": total, "resumed_from": start}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes for ``MemTotal`` and ``MemAvailable`` (keys
    ``memory_total``, ``memory_available``), those present only."""
    out: dict[str, int] = {}
    names = {"MemTotal": "memory_total", "MemAvailable": "memory_available"}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in names:
            parts = rest.split()
            try:
                value = int(parts[0])
            except (IndexError, ValueError):
                continue
            unit = parts[1].lower() if len(parts) > 1 else ""
            out[names[key]] = value * 1024 if unit == "kb" else value
    return out


def parse_uptime(text: str) -> float | None:
    """Seconds since boot from ``/proc/uptime``, or None if unreadable."""
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        return None


class Sysinfo:
    """``sysinfo``: hostname, platform, Python, CPU count, load averages, memory and
    uptime (the last two from ``/proc`` where present, else None)."""

    spec = SkillSpec(
        name="sysinfo",
        description="Host facts: name, platform, Python, CPUs, load, memory, uptime.",
        version=BUILTIN_VERSION,
        idempotent=True,
    )

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc

    async def run(self, ctx: SkillContext) -> object:
        try:
            load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
        except (OSError, AttributeError):
            load = None
        meminfo = _read(self._proc / "meminfo")
        memory = parse_meminfo(meminfo) if meminfo is not None else {}
        uptime_text = _read(self._proc / "uptime")
        return {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "system": platform.system(),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "load_avg": load,
            "memory_total": memory.get("memory_total"),
            "memory_available": memory.get("memory_available"),
            "uptime_s": parse_uptime(uptime_text) if uptime_text is not None else None,
        }


def builtin_skills() -> tuple[Skill, ...]:
    """Fresh instances of every built-in skill."""
    return (Echo(), Sleep(), Sysinfo())


def default_registry() -> Registry:
    """A registry holding the built-in skills."""
    return Registry(builtin_skills())
