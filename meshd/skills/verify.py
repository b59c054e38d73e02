"""The checks that decide whether a pack may be installed: :func:`inspect_pack` (form,
manifest, file hashes, signature) and :func:`verify_pack` (trust, revocation, rollback,
expiry), giving a :class:`VerifiedPack`. Nothing here writes anything or reads the clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from meshd.skills.archive import (
    FILES_DIR,
    FORMAT,
    PACK_JSON,
    SIGNATURE,
    SIGNATURE_BYTES,
    SIGNING_CONTEXT,
    PackError,
    canonical_json,
    is_canonical,
    pack_id,
    read_members,
    relpath_problem,
)
from meshd.skills.manifest import MANIFEST_FILE, Manifest, compare_versions, parse_manifest

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_PACK_JSON_KEYS: Final = ("format", "hashes", "manifest", "name", "signer", "version")


@dataclass(frozen=True)
class VerifiedPack:
    """A pack whose archive, hashes and signature were checked: its ``manifest``, its
    ``signer`` (Ed25519 public key) and that key's node id (``signer_id``), its
    ``pack_id`` and its ``files`` by relpath. ``manifest_text`` is the raw ``skill.toml``."""

    manifest: Manifest
    signer: bytes
    signer_id: str
    pack_id: str
    files: dict[str, bytes]
    manifest_text: str = ""

    @property
    def name(self) -> str:
        """The skill's name."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """The skill's version."""
        return self.manifest.version


@dataclass(frozen=True, slots=True)
class _PackJson:
    name: str
    version: str
    manifest: str
    hashes: dict[str, str]
    signer: bytes


def _parse_pack_json(raw: bytes) -> _PackJson:
    """``pack.json``, checked to be well-formed and canonical."""
    try:
        obj = json.loads(raw.decode("ascii"))
        canonical = canonical_json(obj)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PackError(f"{PACK_JSON}: not valid JSON: {exc}", "bad_archive") from None
    if not isinstance(obj, dict) or sorted(obj) != list(_PACK_JSON_KEYS):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise PackError(
            f"{PACK_JSON}: expected an object with keys {', '.join(_PACK_JSON_KEYS)}; got {keys}",
            "bad_archive",
        )
    if type(obj["format"]) is not int or obj["format"] != FORMAT:
        raise PackError(
            f"{PACK_JSON}: format: {obj['format']!r} is not supported (this meshd reads "
            f"format {FORMAT})",
            "bad_archive",
        )
    for key in ("name", "version", "manifest"):
        if not isinstance(obj[key], str):
            raise PackError(f"{PACK_JSON}: {key}: must be a string", "bad_archive")
    signer, hashes = obj["signer"], obj["hashes"]
    if not isinstance(signer, str) or not _HEX64.fullmatch(signer):
        raise PackError(f"{PACK_JSON}: signer: must be 64 lowercase hex chars", "bad_archive")
    if not isinstance(hashes, dict):
        raise PackError(f"{PACK_JSON}: hashes: must be an object", "bad_archive")
    folders: set[str] = set()
    for rel, digest in hashes.items():
        problem = relpath_problem(rel)
        if problem is not None:
            raise PackError(f"{PACK_JSON}: hashes: {rel!r}: {problem}", "unsafe_path")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise PackError(
                f"{PACK_JSON}: hashes: {rel!r}: must be 64 lowercase hex chars", "bad_archive"
            )
        parts = rel.split("/")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = sorted(folders & set(hashes))
    if clash:
        raise PackError(
            f"{PACK_JSON}: hashes: {clash[0]!r} is both a file and a folder", "unsafe_path"
        )
    if canonical != raw:
        raise PackError(f"{PACK_JSON}: not in canonical form", "bad_archive")
    return _PackJson(
        name=obj["name"],
        version=obj["version"],
        manifest=obj["manifest"],
        hashes=hashes,
        signer=bytes.fromhex(signer),
    )


def _check_files(hashes: Mapping[str, str], files: Mapping[str, bytes]) -> None:
    """Every listed file present with its hash, and no file that is not listed."""
    for rel in sorted(hashes):
        content = files.get(rel)
        if content is None:
            raise PackError(
                f"{FILES_DIR}/{rel}: listed in {PACK_JSON} but not in the archive",
                "missing_file",
            )
        actual = hashlib.sha256(content).hexdigest()
        if actual != hashes[rel]:
            raise PackError(
                f"{FILES_DIR}/{rel}: SHA-256 {actual} differs from {hashes[rel]} in "
                f"{PACK_JSON} (the file was changed after signing)",
                "hash_mismatch",
            )
    extra = sorted(set(files) - set(hashes))
    if extra:
        raise PackError(
            f"{FILES_DIR}/{extra[0]}: in the archive but not listed in {PACK_JSON}",
            "extra_file",
        )


def _node_id(key: bytes) -> str:
    """The node id of ``key`` (imported late: :mod:`meshd.identity` pulls in the wire
    codec, which ``describe FILE`` does not need otherwise)."""
    from meshd.identity import node_id_for

    return node_id_for(key)


def _check_signature(signer: bytes, pack_json: bytes, signature: bytes) -> None:
    try:
        VerifyKey(signer).verify(SIGNING_CONTEXT + pack_json, signature)
    except (CryptoError, ValueError, TypeError):
        raise PackError(
            f"{SIGNATURE}: not a valid signature of this pack by key {signer.hex()} "
            f"(node {_node_id(signer)})",
            "bad_signature",
        ) from None


def inspect_pack(data: bytes) -> VerifiedPack:
    """The pack in ``data``, checked without any notion of trust: a safe, canonical
    archive within the limits, a well-formed ``pack.json`` and ``signature``, a valid
    manifest matching ``pack.json``, every file present with its hash and none extra,
    and a valid signature by the key the pack names. Trust, revocation, rollback and
    expiry are left to :func:`verify_pack`. Raises :class:`PackError`."""
    top, files = read_members(data)
    for name in (PACK_JSON, SIGNATURE):
        if name not in top:
            raise PackError(f"archive: no {name} member: not a skill pack", "bad_archive")
    raw_json, signature = top[PACK_JSON], top[SIGNATURE]
    info = _parse_pack_json(raw_json)
    if len(signature) != SIGNATURE_BYTES:
        raise PackError(
            f"{SIGNATURE}: {len(signature)} bytes, not the {SIGNATURE_BYTES} of an "
            "Ed25519 signature",
            "bad_archive",
        )
    source = f"{MANIFEST_FILE} (in {PACK_JSON})"
    manifest = parse_manifest(info.manifest, source=source)
    for key, said in (("name", info.name), ("version", info.version)):
        declared = getattr(manifest, key)
        if declared != said:
            raise PackError(
                f"{source}: {key}: {declared!r} differs from {said!r} in {PACK_JSON}",
                "bad_manifest",
            )
    if manifest.entry not in info.hashes:
        raise PackError(
            f"{source}: entry: {manifest.entry!r} is not a file of the pack", "missing_file"
        )
    _check_files(info.hashes, files)
    _check_signature(info.signer, raw_json, signature)
    if not is_canonical(data, raw_json, signature, files):
        raise PackError(
            "archive: not in canonical form (extra bytes or headers): rebuild it with build_pack",
            "bad_archive",
        )
    return VerifiedPack(
        manifest=manifest,
        signer=info.signer,
        signer_id=_node_id(info.signer),
        pack_id=pack_id(data),
        files=files,
        manifest_text=info.manifest,
    )


def verify_pack(
    data: bytes,
    *,
    trusted: Callable[[bytes], bool],
    revoked_keys: Collection[bytes],
    revoked_packs: Collection[str],
    installed_version: str | None,
    installed_pack_id: str | None = None,
    now: float,
) -> VerifiedPack:
    """The pack in ``data`` if it may be installed; else :class:`PackError`, and nothing
    is written anywhere. Checks, in order: everything :func:`inspect_pack` checks; the
    signer key is not in ``revoked_keys`` (``revoked_signer``); ``trusted(key)``
    (``untrusted_signer``); the pack id is not in ``revoked_packs`` (``revoked_pack``);
    the version is not below ``installed_version`` (``rollback``), and when equal the
    pack id is ``installed_pack_id`` (a reinstall; else ``same_version_different_content``,
    also when ``installed_pack_id`` is unknown); the pack has not expired at ``now``
    (``expired``)."""
    pack = inspect_pack(data)
    who = f"key {pack.signer.hex()} (node {pack.signer_id})"
    if pack.signer in revoked_keys:
        raise PackError(f"{pack.name} {pack.version}: signed by revoked {who}", "revoked_signer")
    if not trusted(pack.signer):
        raise PackError(
            f"{pack.name} {pack.version}: signed by {who}, which is not trusted",
            "untrusted_signer",
        )
    if any(revoked.lower() == pack.pack_id for revoked in revoked_packs):
        raise PackError(
            f"{pack.name} {pack.version}: pack {pack.pack_id} is revoked", "revoked_pack"
        )
    if installed_version is not None:
        order = compare_versions(pack.version, installed_version)
        if order < 0:
            raise PackError(
                f"{pack.name}: version {pack.version} is older than the installed "
                f"{installed_version}",
                "rollback",
            )
        if order == 0 and installed_pack_id != pack.pack_id:
            raise PackError(
                f"{pack.name} {pack.version}: that version is installed with other content "
                f"(pack {installed_pack_id or 'unknown'}, not {pack.pack_id}); "
                "publish a new version",
                "same_version_different_content",
            )
    expires = pack.manifest.expires
    if expires is not None and now >= expires:
        when = dt.datetime.fromtimestamp(expires, dt.UTC).isoformat()
        raise PackError(f"{pack.name} {pack.version}: expired at {when}", "expired")
    return pack
