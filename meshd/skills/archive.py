"""The skill pack archive, format 1: its bytes (``pack.json`` included) written from a
skill's files, its members read back safely within the limits, pack ids; and
:class:`PackError`, the error of every pack module.

Archive layout (format 1)
-------------------------
An uncompressed POSIX ustar archive holding exactly these members, in this order:

1. ``pack.json``: the canonical JSON (below) of an object with exactly the keys
   ``format`` (the integer 1), ``name`` and ``version`` (as in the manifest),
   ``manifest`` (the raw text of ``skill.toml``), ``hashes`` (``{relpath: SHA-256 hex}``
   of every file of the skill, lowercase) and ``signer`` (the signer's 32-byte Ed25519
   public key, 64 lowercase hex chars);
2. ``signature``: the raw 64-byte Ed25519 signature of the signed bytes (below);
3. ``files/<relpath>`` for every file of the skill, sorted by relpath (code points).

Every member is a regular file written with a ustar header: mode ``0000644``, uid and
gid 0, empty user and group names, mtime 0, devmajor/devminor 0, typeflag ``'0'``; a
path longer than 100 bytes is split into prefix and name at the last ``/`` that fits.
File data is padded with NULs to a multiple of 512 bytes; the archive ends with two zero
blocks and nothing after them. The same folder and key therefore always give the same
bytes.

Canonical JSON is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`` encoded as ASCII, with no trailing newline.

**Signed bytes**: :data:`SIGNING_CONTEXT` (``b"meshd/skill-pack/v1\\x00"``) followed by
the bytes of ``pack.json``. They cover the format, name, version, manifest text, every
file's hash and the signer key; the context keeps a pack signature from ever being
mistaken for any other signature made with a node's key.

A pack is accepted only in canonical form: byte for byte the archive this module writes
for its ``pack.json``, ``signature`` and files. Its :func:`pack_id` (the SHA-256 of the
archive) thus identifies its content, and a revoked pack cannot be re-wrapped (trailing
bytes, other headers, reformatted JSON) to escape revocation under another id.

Paths of files (relpaths) are plain relative POSIX paths: ``/``-separated components of
the POSIX portable filename characters ``[A-Za-z0-9._-]``, none empty, ``.`` or ``..``,
none starting with ``-``, each at most :data:`MAX_COMPONENT_CHARS` characters, and short
enough to be stored in a ustar header under ``files/``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from meshd.errors import MeshError

#: The archive format this module writes and reads.
FORMAT: Final = 1
#: Largest archive accepted, in bytes (it is uncompressed: this bounds all the work).
MAX_ARCHIVE_BYTES: Final = 32 * 1024 * 1024
#: Most members an archive may have (``pack.json`` and ``signature`` included).
MAX_MEMBERS: Final = 1000
#: Largest single file, in bytes.
MAX_FILE_BYTES: Final = 8 * 1024 * 1024
#: Largest sum of the sizes of all members, in bytes.
MAX_TOTAL_BYTES: Final = 32 * 1024 * 1024
#: Longest component of a file's relpath.
MAX_COMPONENT_CHARS: Final = 100
#: Prefix of the signed bytes (domain separation from every other use of a node's key).
SIGNING_CONTEXT: Final = b"meshd/skill-pack/v1\x00"
#: Size of the ``signature`` member (an Ed25519 signature).
SIGNATURE_BYTES: Final = 64

PACK_JSON: Final = "pack.json"
SIGNATURE: Final = "signature"
FILES_DIR: Final = "files"

#: Every :attr:`PackError.code`.
CODES: Final = frozenset(
    {
        "bad_manifest",
        "bad_archive",
        "unsafe_path",
        "link",
        "special_file",
        "too_large",
        "hash_mismatch",
        "missing_file",
        "extra_file",
        "unreadable",
        "exists",
        "bad_signature",
        "untrusted_signer",
        "revoked_signer",
        "revoked_pack",
        "rollback",
        "same_version_different_content",
        "expired",
    }
)

_BLOCK: Final = 512
_COMPONENT: Final = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")


# -- errors -----------------------------------------------------------------------------


class PackError(MeshError):
    """A pack cannot be built, verified or installed. ``code`` is a short stable token
    (one of :data:`CODES`); the message names the file and the field and says why."""

    def __init__(self, message: str, code: str) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code


# -- paths ------------------------------------------------------------------------------


def _split_name(name: str) -> tuple[bytes, bytes] | None:
    """(prefix, name) fields of a ustar header for ``name``, or None if it cannot fit."""
    raw = name.encode("ascii")
    if len(raw) <= 100:
        return b"", raw
    cut = raw.rfind(b"/", 0, 156)
    if cut <= 0 or not 0 < len(raw) - cut - 1 <= 100:
        return None
    return raw[:cut], raw[cut + 1 :]


def relpath_problem(path: str) -> str | None:
    """Why ``path`` is not a plain relative POSIX path a pack may hold (None: it is)."""
    if not isinstance(path, str) or not path:
        return "an empty path"
    if path.startswith("/"):
        return "an absolute path"
    for part in path.split("/"):
        if part in ("", "."):
            return "an empty or '.' path component"
        if part == "..":
            return "a '..' component"
        if len(part) > MAX_COMPONENT_CHARS:
            return f"a component longer than {MAX_COMPONENT_CHARS} characters"
        if not _COMPONENT.fullmatch(part):
            return (
                f"component {part!r} is not made of the characters A-Z a-z 0-9 . _ - "
                "(or starts with '-')"
            )
    if _split_name(f"{FILES_DIR}/{path}") is None:
        return "too long to be stored in the archive"
    return None


# -- writing ----------------------------------------------------------------------------


def canonical_json(obj: object) -> bytes:
    """The canonical JSON bytes of ``obj`` (see the module docstring)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file (the fixed fields of the docstring)."""
    split = _split_name(name)
    if split is None:  # names are checked before they get here
        raise PackError(f"{name}: too long to be stored in the archive", "unsafe_path")
    prefix, base = split
    header = bytearray(_BLOCK)

    def put(offset: int, value: bytes) -> None:
        header[offset : offset + len(value)] = value

    put(0, base)
    put(100, b"0000644\0")  # mode
    put(108, b"0000000\0")  # uid
    put(116, b"0000000\0")  # gid
    put(124, b"%011o\0" % size)
    put(136, b"00000000000\0")  # mtime
    put(148, b"        ")  # checksum, counted as spaces
    put(156, b"0")  # typeflag: regular file
    put(257, b"ustar\x0000")  # magic and version
    put(329, b"0000000\0")  # devmajor
    put(337, b"0000000\0")  # devminor
    put(345, prefix)
    put(148, b"%06o\0 " % sum(header))
    return bytes(header)


def _write_archive(pack_json: bytes, signature: bytes, files: Mapping[str, bytes]) -> bytes:
    """The canonical archive of these members (see the module docstring)."""
    out = io.BytesIO()
    members = [(PACK_JSON, pack_json), (SIGNATURE, signature)]
    members += [(f"{FILES_DIR}/{rel}", files[rel]) for rel in sorted(files)]
    for name, content in members:
        out.write(_ustar_header(name, len(content)))
        out.write(content)
        out.write(b"\0" * (-len(content) % _BLOCK))
    out.write(b"\0" * (2 * _BLOCK))
    return out.getvalue()


def build_archive(
    folder: Path,
    *,
    name: str,
    version: str,
    manifest: str,
    files: Mapping[str, bytes],
    signer: bytes,
    sign: Callable[[bytes], bytes],
) -> bytes:
    """The archive of the skill read from ``folder`` (named in errors): its ``pack.json``
    from ``name``, ``version``, the ``manifest`` text, the hashes of ``files`` and the
    ``signer`` key, signed by ``sign`` (signed bytes in, signature out). Raises
    :class:`PackError` (``too_large``) over :data:`MAX_ARCHIVE_BYTES`."""
    pack_json = canonical_json(
        {
            "format": FORMAT,
            "name": name,
            "version": version,
            "manifest": manifest,
            "hashes": {rel: hashlib.sha256(content).hexdigest() for rel, content in files.items()},
            "signer": signer.hex(),
        }
    )
    data = _write_archive(pack_json, sign(SIGNING_CONTEXT + pack_json), files)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise PackError(
            f"{folder}: the pack would be {len(data)} bytes, over {MAX_ARCHIVE_BYTES}",
            "too_large",
        )
    return data


def pack_id(data: bytes) -> str:
    """The id of a pack: the SHA-256 (lowercase hex) of its archive bytes."""
    return hashlib.sha256(data).hexdigest()


def is_canonical(
    data: bytes, pack_json: bytes, signature: bytes, files: Mapping[str, bytes]
) -> bool:
    """Whether ``data`` is byte for byte the archive this module writes for these
    members (see the module docstring)."""
    return _write_archive(pack_json, signature, files) == data


# -- a skill's folder -------------------------------------------------------------------


def read_file(path: Path) -> bytes:
    """The bytes of the regular file ``path`` (never through a link), at most
    :data:`MAX_FILE_BYTES`."""
    limit = MAX_FILE_BYTES
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PackError(f"{path}: not found", "missing_file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PackError(f"{path}: a symbolic link; a pack holds files only", "link") from None
        raise PackError(f"{path}: cannot read: {exc.strerror}", "unreadable") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise PackError(f"{path}: not a regular file", "special_file")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise PackError(f"{path}: cannot read: {exc.strerror}", "unreadable") from None
    if len(data) > limit:
        raise PackError(f"{path}: larger than the {limit} bytes a pack file may have", "too_large")
    return data


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` by relpath, ``__pycache__/`` and ``*.pyc``
    skipped; refuses links, special files, bad names and anything over the limits."""
    files: dict[str, bytes] = {}
    total = 0
    pending: list[tuple[Path, str]] = [(folder, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise PackError(f"{directory}: cannot list: {exc.strerror}", "unreadable") from None
        for entry in entries:
            path, rel = Path(entry.path), prefix + entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                raise PackError(
                    f"{path}: a symbolic link; a pack holds regular files only "
                    "(copy the target in instead)",
                    "link",
                )
            if stat.S_ISDIR(mode):
                if entry.name != "__pycache__":
                    pending.append((path, rel + "/"))
                continue
            if not stat.S_ISREG(mode):
                raise PackError(
                    f"{path}: not a regular file (socket, device or pipe)", "special_file"
                )
            if entry.name.endswith(".pyc"):
                continue
            problem = relpath_problem(rel)
            if problem is not None:
                raise PackError(f"{path}: {rel!r} cannot be packed: {problem}", "unsafe_path")
            files[rel] = content = read_file(path)
            total += len(content)
            if len(files) + 2 > MAX_MEMBERS:
                raise PackError(
                    f"{folder}: more than {MAX_MEMBERS - 2} files in the skill", "too_large"
                )
            if total > MAX_TOTAL_BYTES:
                raise PackError(
                    f"{folder}: the files add up to more than {MAX_TOTAL_BYTES} bytes",
                    "too_large",
                )
    return files


# -- reading ----------------------------------------------------------------------------


def _member_name_kind(name: str) -> str:
    """``"top"`` for pack.json/signature, ``"dir"`` for ``files``, ``"file"`` for a
    ``files/<relpath>``; refuses unsafe or unexpected names."""
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or "\\" in name:
        raise PackError(f"member {name!r}: an absolute path", "unsafe_path")
    if ".." in name.split("/"):
        raise PackError(f"member {name!r}: a '..' component", "unsafe_path")
    if name in (PACK_JSON, SIGNATURE):
        return "top"
    if name == FILES_DIR:
        return "dir"
    if name.startswith(FILES_DIR + "/"):
        problem = relpath_problem(name[len(FILES_DIR) + 1 :])
        if problem is not None:
            raise PackError(f"member {name!r}: {problem}", "unsafe_path")
        return "file"
    raise PackError(
        f"member {name!r}: not part of a pack (only {PACK_JSON}, {SIGNATURE} and {FILES_DIR}/...)",
        "bad_archive",
    )


def read_members(data: bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The top-level members and the files (by relpath) of the archive, every member
    checked for safety and size before its content is read."""
    if len(data) > MAX_ARCHIVE_BYTES:
        raise PackError(
            f"archive: {len(data)} bytes, over the {MAX_ARCHIVE_BYTES} a pack may have",
            "too_large",
        )
    top: dict[str, bytes] = {}
    files: dict[str, bytes] = {}
    count = total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            while (member := tar.next()) is not None:
                count += 1
                if count > MAX_MEMBERS:
                    raise PackError(f"archive: more than {MAX_MEMBERS} members", "too_large")
                name = member.name
                kind = _member_name_kind(name)
                if member.issym() or member.islnk():
                    raise PackError(f"member {name!r}: a link ({member.linkname!r})", "link")
                if member.isdir():
                    if kind == "top":
                        raise PackError(f"member {name!r}: must be a file", "bad_archive")
                    continue
                if not member.isreg():
                    raise PackError(
                        f"member {name!r}: not a regular file (device, pipe or other)",
                        "special_file",
                    )
                if kind == "dir":
                    raise PackError(f"member {name!r}: must be a folder", "bad_archive")
                if member.size > MAX_FILE_BYTES:
                    raise PackError(
                        f"member {name!r}: {member.size} bytes, over {MAX_FILE_BYTES}",
                        "too_large",
                    )
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise PackError(
                        f"archive: members add up to more than {MAX_TOTAL_BYTES} bytes",
                        "too_large",
                    )
                target = top if kind == "top" else files
                key = name if kind == "top" else name[len(FILES_DIR) + 1 :]
                if key in target:
                    raise PackError(f"member {name!r}: present twice", "bad_archive")
                stream = tar.extractfile(member)
                content = stream.read() if stream is not None else b""
                if len(content) != member.size:
                    raise PackError(f"member {name!r}: truncated", "bad_archive")
                target[key] = content
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
        raise PackError(f"archive: not a readable tar archive: {exc}", "bad_archive") from None
    return top, files
