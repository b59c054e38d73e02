"""The manifest of a skill (``skill.toml``): :class:`Manifest`, :func:`parse_manifest`
and :func:`compare_versions` (semver precedence).

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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from meshd.skills.archive import PackError, relpath_problem
from meshd.skills.policy import Limits, Permissions
from meshd.skills.spec import (
    PARAM_TYPES,
    SKILL_NAME,
    ParamSpec,
    SkillError,
    SkillSpec,
    validate_params,
)

#: Longest skill name (it names a folder).
MAX_NAME_CHARS: Final = 64
#: Longest version string (it names a folder).
MAX_VERSION_CHARS: Final = 64

MANIFEST_FILE: Final = "skill.toml"

_SEMVER: Final = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
)
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


def folder_name_problem(name: str, version: str) -> str | None:
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


def parse_name(value: object, source: str) -> str:
    """The skill name ``value``, checked; else :class:`PackError` (``bad_manifest``)
    naming ``source``."""
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
    problem = relpath_problem(entry)
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
        parse_name(spec.name, source)
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
    name = parse_name(_required(data, "name", source), source)
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
