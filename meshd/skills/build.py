"""Building a skill pack: :func:`build_pack` turns a skill's folder into its signed,
deterministic archive (the format is in :mod:`meshd.skills.archive`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from meshd.skills.archive import PackError, build_archive, read_file, read_folder
from meshd.skills.manifest import MANIFEST_FILE, parse_manifest

if TYPE_CHECKING:
    from meshd.identity import Identity


def build_pack(folder: Path, identity: Identity, now: float | None = None) -> bytes:
    """The signed pack of the skill in ``folder``: ``skill.toml`` is parsed and checked,
    the entry file must exist, every regular file under the folder is packed
    (``__pycache__/`` and ``*.pyc`` skipped). The same folder and identity always give
    the same bytes. Raises :class:`PackError`: ``missing_file``, ``bad_manifest``,
    ``link``, ``special_file``, ``unsafe_path``, ``too_large``, ``unreadable``, or
    ``expired`` when the manifest expires at or before ``now`` (wall-clock epoch
    seconds; None: no expiry check here, :func:`~meshd.skills.verify.verify_pack`
    still makes it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackError(f"{folder}: not a folder", "missing_file")
    manifest_path = folder / MANIFEST_FILE
    raw = read_file(manifest_path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackError(f"{manifest_path}: not UTF-8 text: {exc}", "bad_manifest") from None
    manifest = parse_manifest(text, source=str(manifest_path))
    if manifest.expires is not None and now is not None and now >= manifest.expires:
        raise PackError(f"{manifest_path}: expires: the skill has already expired", "expired")
    files = read_folder(folder)
    if manifest.entry not in files:
        raise PackError(
            f"{manifest_path}: entry: {manifest.entry!r} is not a file in {folder}",
            "missing_file",
        )
    return build_archive(
        folder,
        name=manifest.name,
        version=manifest.version,
        manifest=text,
        files=files,
        signer=identity.ed25519_pk,
        sign=identity.sign,
    )
