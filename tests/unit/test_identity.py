from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.daemon.state import (
    ensure_state_dir,
    load_mesh_key,
    load_or_create_identity,
    save_mesh_key,
)
from meshd.errors import AdmissionError, ConfigError, TokenError
from meshd.identity import Identity, MeshKey, curve_pk_for, node_id_for
from meshd.wire.records import MemberInfo


def info_for(ident: Identity, mesh: MeshKey) -> MemberInfo:
    return ident.sign_info(
        MemberInfo(
            node_id=ident.node_id,
            name="n1",
            role="observer",
            priority=0,
            ed25519_pk=ident.ed25519_pk,
            curve_pk=ident.curve_pk,
            proof=mesh.proof_for(ident.ed25519_pk),
            addresses=("127.0.0.1",),
            router_port=1,
            pub_port=2,
            intro_port=3,
        )
    )


def test_identity_is_created_once_with_owner_only_mode(tmp_path: Path) -> None:
    a, created = load_or_create_identity(tmp_path)
    assert created
    mode = stat.S_IMODE((tmp_path / "identity.key").stat().st_mode)
    assert mode == 0o600
    b, created_again = load_or_create_identity(tmp_path)
    assert not created_again
    assert a.node_id == b.node_id
    assert len(a.node_id) == 32 and a.node_id == node_id_for(a.ed25519_pk)


def test_identity_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    os.chmod(tmp_path / "identity.key", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_damaged_identity_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_text("not hex")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not a meshd identity key"):
        load_or_create_identity(tmp_path)


def test_curve_key_pair_derives_from_the_ed25519_key() -> None:
    from nacl.bindings import crypto_scalarmult_base

    ident = Identity.generate()
    assert crypto_scalarmult_base(ident.curve_sk) == ident.curve_pk
    assert curve_pk_for(ident.ed25519_pk) == ident.curve_pk


def test_token_round_trip_and_typos() -> None:
    mesh = MeshKey.generate()
    token = mesh.token()
    assert token.startswith("meshd1-")
    assert MeshKey.from_token(token) == mesh
    assert MeshKey.from_token("  " + token + "\n") == mesh
    # one character changed -> checksum error, not a silent different mesh
    pos = len(token) - 5
    typo = token[:pos] + ("a" if token[pos] != "a" else "b") + token[pos + 1 :]
    with pytest.raises(TokenError, match=r"checksum|damaged|length"):
        MeshKey.from_token(typo)
    with pytest.raises(TokenError, match="starts with"):
        MeshKey.from_token("hello")
    with pytest.raises(TokenError, match="length"):
        MeshKey.from_token(token[:-8])
    with pytest.raises(TokenError):
        MeshKey.from_token("meshd1-!!!!")


def test_proof_admits_members_only() -> None:
    mesh, other = MeshKey.generate(), MeshKey.generate()
    ident = Identity.generate()
    info = info_for(ident, mesh)
    mesh.check(info)
    assert mesh.verify(info)
    # A proof made with another mesh's key is refused.
    assert not mesh.verify(info_for(ident, other))
    # A copied proof on another key is refused (bound to the key).
    thief = Identity.generate()
    stolen = replace(
        info,
        node_id=thief.node_id,
        ed25519_pk=thief.ed25519_pk,
        curve_pk=thief.curve_pk,
    )
    with pytest.raises(AdmissionError, match="proof"):
        mesh.check(stolen)
    # Keys that do not belong together are refused.
    with pytest.raises(AdmissionError, match="CURVE"):
        mesh.check(replace(info, curve_pk=thief.curve_pk))
    with pytest.raises(AdmissionError, match="does not match"):
        mesh.check(replace(info, node_id=thief.node_id))
    with pytest.raises(AdmissionError, match="32 bytes"):
        mesh.check(replace(info, ed25519_pk=b"short"))


def test_intro_keypair_is_derived_from_the_mesh_key() -> None:
    from nacl.bindings import crypto_scalarmult_base

    mesh = MeshKey.generate()
    pk, sk = mesh.intro_keypair()
    assert crypto_scalarmult_base(sk) == pk
    assert mesh.intro_keypair() == (pk, sk)
    assert MeshKey.generate().intro_keypair()[0] != pk


def test_mesh_key_file(tmp_path: Path) -> None:
    assert load_mesh_key(tmp_path) is None
    mesh = MeshKey.generate()
    save_mesh_key(tmp_path, mesh)
    assert stat.S_IMODE((tmp_path / "mesh.key").stat().st_mode) == 0o600
    assert load_mesh_key(tmp_path) == mesh


def test_state_dir_is_owner_only(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    ensure_state_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
