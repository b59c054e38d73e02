"""A node's state directory at start: its identity and the mesh it belongs to.

``meshd init`` and the first ``meshd start`` create them; later starts load them. A
state dir belongs to one mesh for good: a join token for another mesh is refused with a
precise message rather than silently moving the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshd.errors import ConfigError
from meshd.identity import (
    Identity,
    MeshKey,
    ensure_state_dir,
    load_mesh_key,
    load_or_create_identity,
    save_mesh_key,
)


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
