"""What a packed skill may use: its declared permissions and resource limits.

Shared by the pack manifest (:mod:`meshd.skills.manifest`, which parses them from
``skill.toml``) and the sandboxed runner (:mod:`meshd.skills.sandbox`, which enforces
them). Pure data with validation; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

#: Upper bounds a manifest may ask for (a pack asking more is refused at verification).
MAX_CPU_SECONDS: Final = 3600
MAX_MEMORY_MB: Final = 16384
MAX_WALL_SECONDS: Final = 86400
MAX_OPEN_FILES: Final = 4096
MAX_PROCESSES: Final = 1024
MAX_OUTPUT_KB: Final = 16384


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one run. Defaults suit a small probe or report."""

    #: s of CPU time (RLIMIT_CPU): a busy loop is stopped after this.
    cpu_seconds: int = 30
    #: MiB of address space (RLIMIT_AS). 512 leaves room for CPython and a few libraries.
    memory_mb: int = 512
    #: s of wall-clock time; then the whole process group is killed.
    wall_seconds: int = 300
    #: open file descriptors (RLIMIT_NOFILE).
    open_files: int = 64
    #: processes/threads of the sandbox user (RLIMIT_NPROC): caps a fork bomb.
    processes: int = 16
    #: KiB of stdout and of stderr kept (the rest is dropped and counted).
    output_kb: int = 256

    def __post_init__(self) -> None:
        for name, value, top in (
            ("cpu_seconds", self.cpu_seconds, MAX_CPU_SECONDS),
            ("memory_mb", self.memory_mb, MAX_MEMORY_MB),
            ("wall_seconds", self.wall_seconds, MAX_WALL_SECONDS),
            ("open_files", self.open_files, MAX_OPEN_FILES),
            ("processes", self.processes, MAX_PROCESSES),
            ("output_kb", self.output_kb, MAX_OUTPUT_KB),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"limit {name} must be an integer 1..{top}, not {value!r}")


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a skill declares it needs beyond computing in its scratch directory.

    ``network``: talk to the LAN (without it the run gets no network where the host can
    give it a network namespace of its own). ``internet``: reach beyond the LAN;
    ``privileged``: run with root privileges. Either of those two makes every task of the
    skill wait for an operator's approval. ``read`` / ``write``: absolute filesystem paths
    it may read / write besides its pack and its scratch directory.
    """

    network: bool = False
    internet: bool = False
    privileged: bool = False
    read: tuple[str, ...] = field(default_factory=tuple)
    write: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for kind, paths in (("read", self.read), ("write", self.write)):
            for p in paths:
                if not isinstance(p, str) or not p.startswith("/") or "\x00" in p:
                    raise ValueError(f"{kind} path {p!r} must be an absolute path")
                if any(part == ".." for part in p.split("/")):
                    raise ValueError(f"{kind} path {p!r} must not contain '..'")

    @property
    def needs_approval(self) -> bool:
        """True when an operator must approve each task first (internet or privileged)."""
        return self.internet or self.privileged
