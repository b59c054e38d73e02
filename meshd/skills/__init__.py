"""Skills: what a node can run for a task.

- :mod:`meshd.skills.spec`: :class:`SkillSpec`/:class:`ParamSpec`, :func:`validate_params`,
  :func:`parse_command` and :class:`SkillError`;
- :mod:`meshd.skills.api`: :class:`SkillContext` (what a running skill sees) and the
  :class:`Skill` protocol;
- :mod:`meshd.skills.builtin`: the in-process built-ins (``echo``, ``sleep``, ``sysinfo``)
  and the :class:`Registry`;
- :mod:`meshd.skills.executor`: the :class:`Executor` that runs a skill for a task.

Signed packs and their sandboxed runner (issue 5) plug in behind the same interface.

Names are imported lazily (PEP 562): ``meshctl`` checks params with
:mod:`meshd.skills.spec` without paying for the executor's imports (asyncio, structlog).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshd.skills.api import CheckpointFn, ProgressFn, Skill, SkillCancelled, SkillContext
    from meshd.skills.builtin import (
        Echo,
        Registry,
        Sleep,
        Sysinfo,
        builtin_skills,
        default_registry,
    )
    from meshd.skills.executor import (
        ExecResult,
        Executor,
        ExecutorConfig,
        SkillStats,
        failed,
        ok,
    )
    from meshd.skills.spec import (
        PARAM_TYPES,
        ParamSpec,
        ParamType,
        SkillError,
        SkillSpec,
        parse_command,
        validate_params,
    )

_WHERE = {
    **dict.fromkeys(
        ("CheckpointFn", "ProgressFn", "Skill", "SkillCancelled", "SkillContext"),
        "meshd.skills.api",
    ),
    **dict.fromkeys(
        ("Echo", "Registry", "Sleep", "Sysinfo", "builtin_skills", "default_registry"),
        "meshd.skills.builtin",
    ),
    **dict.fromkeys(
        ("ExecResult", "Executor", "ExecutorConfig", "SkillStats", "failed", "ok"),
        "meshd.skills.executor",
    ),
    **dict.fromkeys(
        (
            "PARAM_TYPES",
            "ParamSpec",
            "ParamType",
            "SkillError",
            "SkillSpec",
            "parse_command",
            "validate_params",
        ),
        "meshd.skills.spec",
    ),
}

__all__ = [
    "PARAM_TYPES",
    "CheckpointFn",
    "Echo",
    "ExecResult",
    "Executor",
    "ExecutorConfig",
    "ParamSpec",
    "ParamType",
    "ProgressFn",
    "Registry",
    "Skill",
    "SkillCancelled",
    "SkillContext",
    "SkillError",
    "SkillSpec",
    "SkillStats",
    "Sleep",
    "Sysinfo",
    "builtin_skills",
    "default_registry",
    "failed",
    "ok",
    "parse_command",
    "validate_params",
]


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)
