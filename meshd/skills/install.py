"""Skill packs on disk: :func:`install_pack` writes a verified pack's files to
``<root>/<name>/<version>/`` atomically; :func:`remove_pack` takes them away."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from meshd.skills.archive import PackError, relpath_problem
from meshd.skills.manifest import folder_name_problem

if TYPE_CHECKING:
    from meshd.skills.verify import VerifiedPack


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tree(base: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` under the fresh folder ``base``: folders 0755, files 0644, each
    file fsync'd, then every folder."""
    folders = {base}
    for rel in sorted(files):
        dest = base.joinpath(*rel.split("/"))
        parent = dest.parent
        missing = [p for p in (parent, *parent.parents) if p not in folders and base in p.parents]
        for folder in reversed(missing):
            folder.mkdir()
            os.chmod(folder, 0o755)
            folders.add(folder)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(files[rel])
            f.flush()
            os.fsync(f.fileno())
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(folder)


def install_pack(pack: VerifiedPack, root: Path) -> Path:
    """Write the files of ``pack`` to ``root/<name>/<version>/`` and return that folder.
    The files go to a temporary folder inside ``root`` first (each fsync'd), which is
    then renamed into place: a crash leaves either nothing or the whole pack. An existing
    folder for that version is left untouched (a reinstall). Names and paths are checked
    again, and nothing is ever written outside ``root`` (``unsafe_path``)."""
    name, version = pack.manifest.name, pack.manifest.version
    problem = folder_name_problem(name, version)
    if problem is not None:
        raise PackError(f"install: {problem}", "unsafe_path")
    for rel in pack.files:
        problem = relpath_problem(rel)
        if problem is not None:
            raise PackError(f"install: {rel!r}: {problem}", "unsafe_path")
    root = Path(root)
    target = root / name / version
    root.mkdir(parents=True, exist_ok=True)
    base = root.resolve()
    if not (base / name / version).resolve().is_relative_to(base):
        raise PackError(f"install: {target} is outside {root}", "unsafe_path")
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
    try:
        os.chmod(tmp, 0o755)
        _write_tree(tmp, pack.files)
        skill_dir = base / name
        if not skill_dir.is_dir():
            skill_dir.mkdir(mode=0o755)
            _fsync_dir(base)
        try:
            os.rename(tmp, skill_dir / version)
        except OSError:
            if target.is_dir():  # installed meanwhile by someone else
                shutil.rmtree(tmp, ignore_errors=True)
                return target
            raise
        _fsync_dir(skill_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def remove_pack(root: Path, name: str, version: str | None = None) -> bool:
    """Remove every installed version of skill ``name`` from ``root`` (or only
    ``version``); False when there was nothing to remove. The folder is first renamed
    out of the way, so no half-removed version is ever seen."""
    problem = folder_name_problem(name, version or "0.0.0")
    if problem is not None:
        raise PackError(f"remove: {problem}", "unsafe_path")
    root = Path(root)
    skill_dir = root / name
    target = skill_dir if version is None else skill_dir / version
    if not os.path.lexists(target):
        return False
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=root))
    try:
        os.rename(target, trash / "gone")
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    if version is not None:
        with contextlib.suppress(OSError):
            skill_dir.rmdir()  # the last version gone: the skill's folder too
    return True
