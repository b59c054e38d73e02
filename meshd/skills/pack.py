"""Signed skill packs: the format, and building, checking and installing packs.

A skill is written as a folder: a ``skill.toml`` manifest, the entry file whose
``run(ctx)`` the runner calls, and any helper modules or data files. :func:`build_pack`
turns the folder into one deterministic archive signed with a node's Ed25519 key;
:func:`verify_pack` checks an archive before anything is written (structure, hashes,
signature, trust, revocation, rollback, expiry); :func:`install_pack` writes a verified
pack to ``<root>/<name>/<version>/`` atomically. :func:`new_skill` scaffolds a folder.

Manifest (``skill.toml``)
-------------------------
Top-level keys: ``name`` (required, :data:`~meshd.skills.spec.SKILL_NAME`, at most
:data:`MAX_NAME_CHARS`), ``version`` (required, semver ``MAJOR.MINOR.PATCH`` with an
optional ``-PRERELEASE``; no ``+BUILD``), ``description``, ``entry`` (required, a ``.py``
file of the pack), ``idempotent`` (default false), ``expires`` (optional: an ISO date,
meaning the end of that day UTC, or an ISO datetime with an offset) and the tables
``[requires]`` (``capabilities``, ``roles``), ``[permissions]`` (the fields of
:class:`~meshd.skills.policy.Permissions`), ``[limits]`` (the fields of
:class:`~meshd.skills.policy.Limits`) and ``[[params]]`` (the fields of
:class:`~meshd.skills.spec.ParamSpec`). An unknown key anywhere is refused: a typo must not
be silently ignored. Every error names the file and the field.

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

import contextlib
import dataclasses
import datetime as dt
import difflib
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from meshd.errors import MeshError
from meshd.skills.policy import Limits, Permissions
from meshd.skills.spec import (
    PARAM_TYPES,
    SKILL_NAME,
    ParamSpec,
    SkillError,
    SkillSpec,
    validate_params,
)

if TYPE_CHECKING:
    from meshd.identity import Identity

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
#: Longest skill name (it names a folder).
MAX_NAME_CHARS: Final = 64
#: Longest version string (it names a folder).
MAX_VERSION_CHARS: Final = 64
#: Longest component of a file's relpath.
MAX_COMPONENT_CHARS: Final = 100
#: Prefix of the signed bytes (domain separation from every other use of a node's key).
SIGNING_CONTEXT: Final = b"meshd/skill-pack/v1\x00"

MANIFEST_FILE: Final = "skill.toml"
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
_SIGNATURE_BYTES: Final = 64
_COMPONENT: Final = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_SEMVER: Final = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
)
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: Role names, as in :mod:`meshd.roles`.
_ROLE: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
_CAPABILITY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_TOP_KEYS: Final = (
    "name",
    "version",
    "description",
    "entry",
    "idempotent",
    "expires",
    "requires",
    "permissions",
    "limits",
    "params",
)
_REQUIRES_KEYS: Final = ("capabilities", "roles")
_PERMISSION_KEYS: Final = tuple(f.name for f in dataclasses.fields(Permissions))
_LIMIT_KEYS: Final = tuple(f.name for f in dataclasses.fields(Limits))
_PARAM_KEYS: Final = ("name", "type", "description", "default", "required", "minimum", "maximum")
_DICT_KEYS: Final = ("spec", "entry", "roles", "permissions", "limits", "expires")
_PACK_JSON_KEYS: Final = ("format", "hashes", "manifest", "name", "signer", "version")


class PackError(MeshError):
    """A pack cannot be built, verified or installed. ``code`` is a short stable token
    (one of :data:`CODES`); the message names the file and the field and says why."""

    def __init__(self, message: str, code: str) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code


# -- versions ---------------------------------------------------------------------------


def _version_parts(version: str) -> tuple[tuple[int, int, int], tuple[str, ...] | None]:
    """(MAJOR, MINOR, PATCH) and the prerelease identifiers (None for a release)."""
    m = _SEMVER.fullmatch(version) if isinstance(version, str) else None
    if m is None or len(version) > MAX_VERSION_CHARS:
        raise PackError(
            f"bad version {version!r}: expected MAJOR.MINOR.PATCH or "
            f"MAJOR.MINOR.PATCH-PRERELEASE (semver, no +build, at most "
            f"{MAX_VERSION_CHARS} characters)",
            "bad_manifest",
        )
    pre = m.group(4)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))), (
        tuple(pre.split(".")) if pre is not None else None
    )


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _compare_prerelease(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Semver precedence of two prerelease identifier lists (item 11.4 of semver 2.0)."""
    for x, y in zip(a, b, strict=False):
        if x == y:
            continue
        x_num, y_num = x.isdigit(), y.isdigit()
        if x_num and y_num:
            return _sign(int(x) - int(y))
        if x_num != y_num:
            return -1 if x_num else 1
        return -1 if x < y else 1
    return _sign(len(a) - len(b))


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` comes before, equals or comes after ``b`` in semver
    precedence (``1.0.0-alpha < 1.0.0-alpha.1 < 1.0.0-beta < 1.0.0 < 1.0.1``). Raises
    :class:`PackError` (``bad_manifest``) for a string that is not such a version."""
    (core_a, pre_a), (core_b, pre_b) = _version_parts(a), _version_parts(b)
    if core_a != core_b:
        return -1 if core_a < core_b else 1
    if pre_a is None or pre_b is None:
        return _sign((pre_a is None) - (pre_b is None))
    return _compare_prerelease(pre_a, pre_b)


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


def _relpath_problem(path: str) -> str | None:
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


def _folder_name_problem(name: str, version: str) -> str | None:
    """Why ``name``/``version`` cannot name an install folder (None: they can)."""
    if not isinstance(name, str) or not SKILL_NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        return f"bad skill name {name!r}"
    try:
        _version_parts(version)
    except PackError:
        return f"bad version {version!r}"
    return None


# -- the manifest -----------------------------------------------------------------------


def _bad(source: str, where: str, problem: str) -> PackError:
    return PackError(f"{source}: {where}: {problem}", "bad_manifest")


def _check_keys(table: Mapping[str, object], known: tuple[str, ...], source: str, at: str) -> None:
    """Refuse a key of ``table`` that is not in ``known`` (``at``: the table's path)."""
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PackError(
                f"{source}: unknown key {at + str(key)!r}{hint} (known: {', '.join(known)})",
                "bad_manifest",
            )


def _table(value: object, source: str, where: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise _bad(source, where, f"must be a table, not {value!r}")
    return cast(Mapping[str, object], value)


def _required(table: Mapping[str, object], key: str, source: str, at: str = "") -> object:
    if key not in table:
        raise _bad(source, at + key, "is required")
    return table[key]


def _str(value: object, source: str, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(source, where, f"must be a string, not {value!r}")
    return value


def _bool(value: object, source: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(source, where, f"must be true or false, not {value!r}")
    return value


def _str_list(value: object, source: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _bad(source, where, f"must be a list of strings, not {value!r}")
    return tuple(value)


def _number(value: object, source: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(source, where, f"must be a finite number, not {value!r}")
    return float(value)


def _parse_name(value: object, source: str) -> str:
    name = _str(value, source, "name")
    if not SKILL_NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        raise _bad(
            source,
            "name",
            f"bad skill name {name!r}: a letter, then letters, digits, '-', '_' or '.' "
            f"(at most {MAX_NAME_CHARS} characters)",
        )
    return name


def _parse_version(value: object, source: str) -> str:
    version = _str(value, source, "version")
    try:
        _version_parts(version)
    except PackError as exc:
        raise _bad(source, "version", str(exc)) from None
    return version


def _parse_entry(value: object, source: str) -> str:
    entry = _str(value, source, "entry")
    problem = _relpath_problem(entry)
    if problem is not None:
        raise _bad(source, "entry", f"{entry!r} is not a plain relative path: {problem}")
    if not entry.endswith(".py"):
        raise _bad(source, "entry", f"{entry!r} must be a Python file (ending in .py)")
    return entry


def _parse_expires(value: object, source: str) -> float:
    """Epoch seconds from which the pack is refused."""
    if isinstance(value, str):
        try:
            if _ISO_DATE.fullmatch(value):
                value = dt.date.fromisoformat(value)
            else:
                value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _bad(
                source,
                "expires",
                f"{value!r} is not an ISO date (2027-12-31) or an ISO datetime with an "
                "offset (2027-12-31T18:00:00+01:00)",
            ) from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _bad(source, "expires", f"{value} needs an offset, such as Z or +01:00")
        return value.timestamp()
    if isinstance(value, dt.date):
        try:
            next_day = value + dt.timedelta(days=1)
        except OverflowError:
            raise _bad(source, "expires", f"{value} is out of range") from None
        return dt.datetime.combine(next_day, dt.time(0), tzinfo=dt.UTC).timestamp()
    raise _bad(source, "expires", f"must be an ISO date or datetime, not {value!r}")


def _parse_roles(value: object, source: str, where: str) -> tuple[str, ...]:
    roles = _str_list(value, source, where)
    for role in roles:
        if not _ROLE.fullmatch(role):
            raise _bad(source, where, f"bad role name {role!r}")
    return roles


def _parse_capabilities(value: object, source: str, where: str) -> tuple[str, ...]:
    capabilities = _str_list(value, source, where)
    for cap in capabilities:
        if not _CAPABILITY.fullmatch(cap):
            raise _bad(source, where, f"bad capability {cap!r}: letters, digits, '.', '_' or '-'")
    return capabilities


def _parse_permissions(value: object, source: str, at: str) -> Permissions:
    table = _table(value, source, at)
    _check_keys(table, _PERMISSION_KEYS, source, at + ".")
    permissions = Permissions()
    for key, item in table.items():
        where = f"{at}.{key}"
        converted: Any = (
            _str_list(item, source, where)
            if key in ("read", "write")
            else _bool(item, source, where)
        )
        try:
            permissions = dataclasses.replace(permissions, **{key: converted})
        except ValueError as exc:
            raise _bad(source, where, str(exc)) from None
    return permissions


def _parse_limits(value: object, source: str, at: str) -> Limits:
    table = _table(value, source, at)
    _check_keys(table, _LIMIT_KEYS, source, at + ".")
    limits = Limits()
    for key, item in table.items():
        change: dict[str, Any] = {key: item}
        try:
            limits = dataclasses.replace(limits, **change)
        except ValueError as exc:
            raise _bad(source, f"{at}.{key}", str(exc)) from None
    return limits


def _parse_param(value: object, skill: str, source: str, at: str) -> ParamSpec:
    table = _table(value, source, at)
    _check_keys(table, _PARAM_KEYS, source, at + ".")
    name = _str(_required(table, "name", source, at + "."), source, f"{at}.name")
    ptype = _str(table.get("type", "str"), source, f"{at}.type")
    if ptype not in PARAM_TYPES:
        raise _bad(source, f"{at}.type", f"unknown type {ptype!r}; known: {', '.join(PARAM_TYPES)}")
    required = _bool(table.get("required", False), source, f"{at}.required")
    try:
        param = ParamSpec(
            name=name,
            type=ptype,
            description=_str(table.get("description", ""), source, f"{at}.description"),
            minimum=_number(table.get("minimum"), source, f"{at}.minimum"),
            maximum=_number(table.get("maximum"), source, f"{at}.maximum"),
        )
    except ValueError as exc:
        raise _bad(source, at, str(exc)) from None
    if "default" in table:
        if required:
            raise _bad(source, f"{at}.default", "a required parameter has no default")
        try:
            checked = validate_params(SkillSpec(skill, params=(param,)), {name: table["default"]})
        except SkillError as exc:
            raise _bad(source, f"{at}.default", str(exc)) from None
        param = dataclasses.replace(param, default=checked[name])
    return dataclasses.replace(param, required=required)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A skill's manifest, checked: what the skill is (``spec``), its ``entry`` file,
    the ``roles`` that may run it (empty: any), its ``permissions`` and ``limits``, and
    when it expires (``expires``, epoch seconds; None: never)."""

    spec: SkillSpec
    entry: str
    roles: tuple[str, ...] = ()
    permissions: Permissions = field(default_factory=Permissions)
    limits: Limits = field(default_factory=Limits)
    expires: float | None = None

    @property
    def name(self) -> str:
        """The skill's name."""
        return self.spec.name

    @property
    def version(self) -> str:
        """The skill's version (semver)."""
        return self.spec.version

    def to_dict(self) -> dict[str, object]:
        """A msgpack-ready form (for the wire and the store)."""
        p = self.permissions
        return {
            "spec": self.spec.to_dict(),
            "entry": self.entry,
            "roles": list(self.roles),
            "permissions": {
                "network": p.network,
                "internet": p.internet,
                "privileged": p.privileged,
                "read": list(p.read),
                "write": list(p.write),
            },
            "limits": {key: getattr(self.limits, key) for key in _LIMIT_KEYS},
            "expires": self.expires,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Manifest:
        """The inverse of :meth:`to_dict`, with every check of :func:`parse_manifest`
        (it may come from a peer); raises :class:`PackError` (``bad_manifest``)."""
        source = "manifest"
        table = _table(data, source, "(top)")
        _check_keys(table, _DICT_KEYS, source, "")
        raw_spec = _table(_required(table, "spec", source), source, "spec")
        try:
            spec = SkillSpec.from_dict(raw_spec)
        except SkillError as exc:
            raise _bad(source, "spec", str(exc)) from None
        _parse_name(spec.name, source)
        _parse_version(spec.version, source)
        _parse_capabilities(spec.capabilities, source, "spec.capabilities")
        expires = _number(table.get("expires"), source, "expires")
        return cls(
            spec=spec,
            entry=_parse_entry(_required(table, "entry", source), source),
            roles=_parse_roles(table.get("roles", []), source, "roles"),
            permissions=_parse_permissions(table.get("permissions", {}), source, "permissions"),
            limits=_parse_limits(table.get("limits", {}), source, "limits"),
            expires=expires,
        )


def parse_manifest(text: str, source: str = MANIFEST_FILE) -> Manifest:
    """The :class:`Manifest` that ``text`` (a ``skill.toml``) declares. Raises
    :class:`PackError` (``bad_manifest``) naming ``source`` and the field for invalid
    TOML, an unknown or missing key, a value of the wrong type or out of range, a bad
    name, version, entry path, role, capability, permission, limit or parameter."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PackError(f"{source}: not valid TOML: {exc}", "bad_manifest") from None
    _check_keys(data, _TOP_KEYS, source, "")
    name = _parse_name(_required(data, "name", source), source)
    version = _parse_version(_required(data, "version", source), source)
    entry = _parse_entry(_required(data, "entry", source), source)
    requires = _table(data.get("requires", {}), source, "requires")
    _check_keys(requires, _REQUIRES_KEYS, source, "requires.")
    raw_params = data.get("params", [])
    if not isinstance(raw_params, list):
        raise _bad(source, "params", "must be an array of tables ([[params]])")
    params = tuple(
        _parse_param(item, name, source, f"params[{i}]") for i, item in enumerate(raw_params)
    )
    try:
        spec = SkillSpec(
            name=name,
            description=_str(data.get("description", ""), source, "description"),
            version=version,
            params=params,
            idempotent=_bool(data.get("idempotent", False), source, "idempotent"),
            capabilities=_parse_capabilities(
                requires.get("capabilities", []), source, "requires.capabilities"
            ),
        )
    except ValueError as exc:
        raise _bad(source, "params", str(exc)) from None
    return Manifest(
        spec=spec,
        entry=entry,
        roles=_parse_roles(requires.get("roles", []), source, "requires.roles"),
        permissions=_parse_permissions(data.get("permissions", {}), source, "permissions"),
        limits=_parse_limits(data.get("limits", {}), source, "limits"),
        expires=_parse_expires(data["expires"], source) if "expires" in data else None,
    )


# -- the archive ------------------------------------------------------------------------


def _canonical_json(obj: object) -> bytes:
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


def pack_id(data: bytes) -> str:
    """The id of a pack: the SHA-256 (lowercase hex) of its archive bytes."""
    return hashlib.sha256(data).hexdigest()


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (never through a link), at most ``limit``."""
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


def _collect(folder: Path) -> dict[str, bytes]:
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
            problem = _relpath_problem(rel)
            if problem is not None:
                raise PackError(f"{path}: {rel!r} cannot be packed: {problem}", "unsafe_path")
            files[rel] = content = _read_regular(path, MAX_FILE_BYTES)
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


def build_pack(folder: Path, identity: Identity, now: float | None = None) -> bytes:
    """The signed pack of the skill in ``folder`` (see the module docstring for the
    format): ``skill.toml`` is parsed and checked, the entry file must exist, every
    regular file under the folder is packed (``__pycache__/`` and ``*.pyc`` skipped).
    The same folder and identity always give the same bytes. Raises :class:`PackError`:
    ``missing_file``, ``bad_manifest``, ``link``, ``special_file``, ``unsafe_path``,
    ``too_large``, ``unreadable``, or ``expired`` when the manifest expires before
    ``now`` (default: the current time)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackError(f"{folder}: not a folder", "missing_file")
    manifest_path = folder / MANIFEST_FILE
    raw = _read_regular(manifest_path, MAX_FILE_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackError(f"{manifest_path}: not UTF-8 text: {exc}", "bad_manifest") from None
    manifest = parse_manifest(text, source=str(manifest_path))
    current = time.time() if now is None else now
    if manifest.expires is not None and current >= manifest.expires:
        raise PackError(f"{manifest_path}: expires: the skill has already expired", "expired")
    files = _collect(folder)
    if manifest.entry not in files:
        raise PackError(
            f"{manifest_path}: entry: {manifest.entry!r} is not a file in {folder}",
            "missing_file",
        )
    pack_json = _canonical_json(
        {
            "format": FORMAT,
            "name": manifest.name,
            "version": manifest.version,
            "manifest": text,
            "hashes": {rel: hashlib.sha256(content).hexdigest() for rel, content in files.items()},
            "signer": identity.ed25519_pk.hex(),
        }
    )
    signature = identity.sign(SIGNING_CONTEXT + pack_json)
    data = _write_archive(pack_json, signature, files)
    if len(data) > MAX_ARCHIVE_BYTES:
        raise PackError(
            f"{folder}: the pack would be {len(data)} bytes, over {MAX_ARCHIVE_BYTES}",
            "too_large",
        )
    return data


# -- reading and verifying --------------------------------------------------------------


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
        problem = _relpath_problem(name[len(FILES_DIR) + 1 :])
        if problem is not None:
            raise PackError(f"member {name!r}: {problem}", "unsafe_path")
        return "file"
    raise PackError(
        f"member {name!r}: not part of a pack (only {PACK_JSON}, {SIGNATURE} and {FILES_DIR}/...)",
        "bad_archive",
    )


def _read_members(data: bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:
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


def _parse_pack_json(raw: bytes) -> _PackJson:
    """``pack.json``, checked to be well-formed and canonical."""
    try:
        obj = json.loads(raw.decode("ascii"))
        canonical = _canonical_json(obj)
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
        problem = _relpath_problem(rel)
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
    top, files = _read_members(data)
    for name in (PACK_JSON, SIGNATURE):
        if name not in top:
            raise PackError(f"archive: no {name} member: not a skill pack", "bad_archive")
    raw_json, signature = top[PACK_JSON], top[SIGNATURE]
    info = _parse_pack_json(raw_json)
    if len(signature) != _SIGNATURE_BYTES:
        raise PackError(
            f"{SIGNATURE}: {len(signature)} bytes, not the {_SIGNATURE_BYTES} of an "
            "Ed25519 signature",
            "bad_archive",
        )
    source = f"{MANIFEST_FILE} (in {PACK_JSON})"
    manifest = parse_manifest(info.manifest, source=source)
    for key, said in (("name", info.name), ("version", info.version)):
        declared = getattr(manifest, key)
        if declared != said:
            raise _bad(source, key, f"{declared!r} differs from {said!r} in {PACK_JSON}")
    if manifest.entry not in info.hashes:
        raise PackError(
            f"{source}: entry: {manifest.entry!r} is not a file of the pack", "missing_file"
        )
    _check_files(info.hashes, files)
    _check_signature(info.signer, raw_json, signature)
    if _write_archive(raw_json, signature, files) != data:
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


# -- installing -------------------------------------------------------------------------


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
    problem = _folder_name_problem(name, version)
    if problem is not None:
        raise PackError(f"install: {problem}", "unsafe_path")
    for rel in pack.files:
        problem = _relpath_problem(rel)
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
    problem = _folder_name_problem(name, version or "0.0.0")
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


# -- scaffolding ------------------------------------------------------------------------

_TOML_TEMPLATE: Final = """\
# skill.toml: what the skill is, what it needs and what it may do.
# Every key is checked: a misspelt one is refused, not ignored.

name = "{name}"                   # a letter, then letters, digits, '-', '_' or '.'
version = "0.1.0"                 # semver MAJOR.MINOR.PATCH, optionally -prerelease
description = "Repeat a message a few times."
entry = "main.py"                 # the file whose run(ctx) is called
idempotent = true                 # true: running it twice is harmless, so it may be re-run
# expires = "2030-12-31"          # refused after that day (UTC), or a datetime with offset

[requires]
capabilities = []                 # capabilities the agent must have, e.g. ["network.probe"]
roles = []                        # roles that may run it; [] = any role

[permissions]
network = false                   # talk to the LAN
internet = false                  # reach beyond the LAN (every task then awaits approval)
privileged = false                # run as root (every task then awaits approval)
read = []                         # absolute paths it may read, e.g. ["/etc/hostname"]
write = []                        # absolute paths it may write

[limits]
cpu_seconds = 10                  # CPU time
memory_mb = 256                   # address space
wall_seconds = 60                 # wall-clock time
open_files = 64
processes = 16
output_kb = 256                   # stdout/stderr kept

[[params]]
name = "message"
type = "str"                      # {types}
description = "What to repeat."
default = "hello"

[[params]]
name = "count"
type = "int"
description = "How many times."
default = 3
minimum = 1
maximum = 100
"""

_MAIN_TEMPLATE: Final = '''\
"""{name}: repeat a message a few times.

The runner imports this file and calls ``run(ctx)``, where

- ``ctx.params`` holds the parameters declared in skill.toml, already checked and typed,
  defaults filled in (a read-only mapping);
- ``ctx.progress(pct, message)`` reports progress (pct from 0 to 100);
- ``ctx.checkpoint(data)`` saves opaque bytes: should the task move to another agent, the
  next run can pick up from there.

``run`` returns the task's result: a dict of plain values (str, int, float, bool, None,
bytes, lists, dicts). Raising an exception fails the task.
"""

from __future__ import annotations

from typing import Any


def run(ctx: Any) -> dict[str, object]:
    message = str(ctx.params["message"])
    count = int(ctx.params["count"])
    lines = []
    for i in range(1, count + 1):
        lines.append(f"{{i}}: {{message}}")
        ctx.progress(100.0 * i / count, f"said it {{i}} of {{count}} times")
        ctx.checkpoint(str(i).encode())
    return {{"lines": lines, "count": count}}
'''


def new_skill(folder: Path, name: str) -> None:
    """Create ``folder`` with a ``skill.toml`` (every field, commented) and a ``main.py``
    whose documented ``run(ctx)`` uses the params, progress and checkpoints; it builds
    with :func:`build_pack` as is. Refuses a bad ``name`` (``bad_manifest``) and an
    existing folder that is not empty, or a file (``exists``)."""
    _parse_name(name, "new skill")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PackError(f"{folder}: already exists and is not an empty folder", "exists")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).write_text(
        _TOML_TEMPLATE.format(name=name, types=", ".join(PARAM_TYPES)), encoding="utf-8"
    )
    (folder / "main.py").write_text(_MAIN_TEMPLATE.format(name=name), encoding="utf-8")
