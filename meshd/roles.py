"""Agent roles: one TOML file per role in ``agent_roles/``.

A role gives a node its description, capabilities, default lead priority (0 = never
lead), tier, the skill packs it carries and its resource limits. The files ship inside
the wheel (``meshd/_data/agent_roles``); in a source checkout they are read from the
top-level ``agent_roles/`` folder. ``MESHD_ROLES_DIR`` adds a folder of site-specific roles.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from meshd.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True, slots=True)
class RoleLimits:
    max_concurrent_tasks: int = 2
    cpu_seconds: int = 60
    memory_mb: int = 256
    wall_seconds: int = 300


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str
    tier: int
    priority: int
    capabilities: tuple[str, ...]
    skill_packs: tuple[str, ...] = ()
    limits: RoleLimits = field(default_factory=RoleLimits)


def role_dirs() -> list[Path]:
    dirs: list[Path] = []
    extra = os.environ.get("MESHD_ROLES_DIR")
    if extra:
        dirs.append(Path(extra))
    pkg = Path(__file__).resolve().parent
    for candidate in (pkg / "_data" / "agent_roles", pkg.parent / "agent_roles"):
        if candidate.is_dir():
            dirs.append(candidate)
            break
    return dirs


def _parse(path: Path) -> Role:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"role file {path} is not valid TOML: {exc}") from None
    try:
        name = str(data["name"])
        if not _NAME.match(name):
            raise ConfigError(f"role file {path}: bad role name {name!r}")
        priority = int(data["priority"])
        if not 0 <= priority <= 1000:
            raise ConfigError(f"role file {path}: priority must be 0..1000")
        limits = data.get("limits", {})
        return Role(
            name=name,
            description=str(data["description"]),
            tier=int(data.get("tier", 2)),
            priority=priority,
            capabilities=tuple(str(c) for c in data.get("capabilities", [])),
            skill_packs=tuple(str(s) for s in data.get("skill_packs", [])),
            limits=RoleLimits(**{k: int(v) for k, v in limits.items()}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"role file {path} is incomplete or wrong: {exc}") from None


def load_roles() -> dict[str, Role]:
    roles: dict[str, Role] = {}
    for folder in reversed(role_dirs()):  # earlier dirs (MESHD_ROLES_DIR) override
        for path in sorted(folder.glob("*.toml")):
            role = _parse(path)
            roles[role.name] = role
    return roles


def get_role(name: str) -> Role:
    roles = load_roles()
    if name not in roles:
        known = ", ".join(sorted(roles)) or "(none found)"
        raise ConfigError(f"unknown role {name!r}; known roles: {known}")
    return roles[name]
