"""A node's state directory: its identity and the mesh it belongs to, on disk.

``meshd init`` and the first ``meshd start`` create them; later starts load them. The
directory is owner-only (0700); the key files are written once, 0600, fsync'd, and
refused when other users can read them. A state dir belongs to one mesh for good: a join
token for another mesh is refused with a precise message rather than silently moving the
host.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from meshd.errors import ConfigError
from meshd.identity import Identity, MeshKey

IDENTITY_FILE = "identity.key"
MESH_FILE = "mesh.key"


def _check_private_file(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by other users (mode {mode:04o}); run: chmod 600 {path}"
        )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_state_dir(state_dir: Path) -> Path:
    """Create the state dir owner-only (0700); refuse one other users can write."""
    state_dir = state_dir.expanduser()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    if mode & 0o077:
        os.chmod(state_dir, 0o700)
    return state_dir


def load_or_create_identity(state_dir: Path) -> tuple[Identity, bool]:
    """Load the node's identity, creating it on first use. Returns (identity, created)."""
    path = state_dir / IDENTITY_FILE
    if path.exists():
        _check_private_file(path)
        raw = path.read_bytes()
        try:
            return Identity.from_seed(bytes.fromhex(raw.decode().strip())), False
        except ValueError:
            raise ConfigError(f"{path} is not a meshd identity key (64 hex chars)") from None
    ident = Identity.generate()
    _write_private(path, ident.seed.hex().encode() + b"\n")
    return ident, True


def load_mesh_key(state_dir: Path) -> MeshKey | None:
    """The mesh key of this state dir (None before ``meshd init`` or a join)."""
    path = state_dir / MESH_FILE
    if not path.exists():
        return None
    _check_private_file(path)
    return MeshKey.from_token(path.read_text())


def save_mesh_key(state_dir: Path, mesh: MeshKey) -> None:
    _write_private(state_dir / MESH_FILE, mesh.token().encode() + b"\n")


@dataclass(frozen=True, slots=True)
class MeshSetup:
    """What :func:`prepare_state` found or made."""

    identity: Identity
    mesh: MeshKey
    created_mesh: bool
    created_identity: bool


def prepare_state(state_dir: Path, join_token: str | None) -> MeshSetup:
    """Create or load identity and mesh key (``meshd init`` and first ``meshd start``)."""
    ensure_state_dir(state_dir)
    identity, created_identity = load_or_create_identity(state_dir)
    current = load_mesh_key(state_dir)
    if join_token is not None:
        wanted = MeshKey.from_token(join_token)
        if current is not None and current != wanted:
            raise ConfigError(
                f"state dir {state_dir} already belongs to mesh {current.mesh_id}; the token is "
                f"for mesh {wanted.mesh_id}. Use another --state-dir, or remove "
                f"{state_dir / 'mesh.key'} to leave the old mesh for good"
            )
        if current is None:
            save_mesh_key(state_dir, wanted)
        return MeshSetup(identity, wanted, False, created_identity)
    if current is None:
        mesh = MeshKey.generate()
        save_mesh_key(state_dir, mesh)
        return MeshSetup(identity, mesh, True, created_identity)
    return MeshSetup(identity, current, False, created_identity)
