"""disk-usage: space on the file systems holding some paths.

For each path: ``total``, ``used`` and ``free`` bytes from ``shutil.disk_usage``
(``free`` is what an unprivileged user may still write), ``percent`` used as ``df``
counts it (used / (used + free), so the blocks reserved for root count as neither) and
``mount``, the mount point above the path. Paths at or above ``threshold`` percent are
listed in ``alerts``.
"""

from __future__ import annotations

import os
import shutil
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


MAX_PATHS = 32


def mount_point(path: str) -> str:
    """The mount point that ``path`` lives on."""
    current = os.path.realpath(path)
    while not os.path.ismount(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def usage(path: str) -> dict[str, Any]:
    if not path.startswith("/") or "\x00" in path:
        raise SkillFailure("bad_params", f"{path!r} is not an absolute path")
    try:
        total, used, free = shutil.disk_usage(path)
    except FileNotFoundError:
        raise SkillFailure("not_found", f"{path}: no such file or directory") from None
    except PermissionError:
        raise SkillFailure("permission_denied", f"{path}: permission denied") from None
    except OSError as exc:
        raise SkillFailure("os_error", f"{path}: {exc.strerror or exc}") from None
    percent = 100.0 * used / (used + free) if used + free else 0.0
    return {
        "path": path,
        "mount": mount_point(path),
        "total": total,
        "used": used,
        "free": free,
        "percent": round(percent, 1),
    }


def run(ctx: Any) -> dict[str, Any]:
    paths = ctx.params.get("paths") or ["/"]
    if isinstance(paths, str):
        paths = [paths]
    if len(paths) > MAX_PATHS:
        raise SkillFailure("bad_params", f"{len(paths)} paths: {MAX_PATHS} at most")
    threshold = float(ctx.params.get("threshold", 90.0))
    out = []
    for i, path in enumerate(paths):
        out.append(usage(str(path)))
        ctx.progress(100.0 * (i + 1) / len(paths), str(path))
    return {
        "paths": out,
        "threshold": threshold,
        "alerts": [u["path"] for u in out if u["percent"] >= threshold],
    }
