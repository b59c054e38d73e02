"""What a skill declares about itself, and the checks on the parameters it is given.

A :class:`SkillSpec` lists a skill's parameters (:class:`ParamSpec`). The built-in skills
declare theirs in code; signed packs (issue 5) will build the same objects from their
``skill.toml``. :func:`validate_params` turns what a user typed (strings from the CLI, or
values from the Python client) into typed values, fills in defaults and refuses anything
else with a precise :class:`SkillError`, so a bad request is refused before a task is
stored. :func:`parse_command` reads the ``meshctl delegate "NAME k=v ..."`` form.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from meshd.errors import MeshError

ParamType = Literal["str", "int", "float", "bool", "list[str]"]

#: The parameter types a skill may declare (more, such as ``cidr`` or ``port``, may come
#: with the packs; append here).
PARAM_TYPES: Final[tuple[ParamType, ...]] = ("str", "int", "float", "bool", "list[str]")

_TRUE: Final = frozenset({"true", "yes", "on", "1"})
_FALSE: Final = frozenset({"false", "no", "off", "0"})

#: Skill names: a letter, then letters, digits, ``-``, ``_`` or ``.`` (e.g. ``scan-network``).
SKILL_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
#: Parameter names: a letter or ``_``, then letters, digits, ``_`` or ``-``.
PARAM_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class SkillError(MeshError):
    """A skill cannot be run as asked. ``code`` is a short stable token (``bad_params``,
    ``unknown_skill``, or a skill's own code when a running skill raises it); the message
    says what and why."""

    def __init__(self, message: str, code: str = "bad_params") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One declared parameter. ``minimum``/``maximum`` (inclusive) apply to ``int`` and
    ``float``. A parameter that is not ``required`` and has no ``default`` is simply left
    out of the validated params when not given."""

    name: str
    type: ParamType = "str"
    description: str = ""
    default: object = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        if not PARAM_NAME.match(self.name):
            raise ValueError(f"bad parameter name {self.name!r}")
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: unknown type {self.type!r}")
        if self.required and self.default is not None:
            raise ValueError(f"parameter {self.name!r}: a required parameter has no default")
        if (self.minimum is not None or self.maximum is not None) and self.type not in (
            "int",
            "float",
        ):
            raise ValueError(f"parameter {self.name!r}: a range needs type int or float")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"parameter {self.name!r}: minimum above maximum")


@dataclass(frozen=True, slots=True)
class SkillSpec:
    """What a skill is: its name, version, parameters, whether running it twice is
    harmless (``idempotent``: the lead may then re-run it after a crash) and the
    capabilities an agent needs to run it."""

    name: str
    description: str = ""
    version: str = "0.0.0"
    params: tuple[ParamSpec, ...] = ()
    idempotent: bool = False
    capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not SKILL_NAME.match(self.name):
            raise ValueError(f"bad skill name {self.name!r}")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"skill {self.name!r}: a parameter is declared twice")

    def to_dict(self) -> dict[str, object]:
        """A msgpack-ready form (for SKILL_* messages, ``describe`` and the store)."""
        return {
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "idempotent": self.idempotent,
            "capabilities": list(self.capabilities),
            "params": [
                {
                    "name": p.name,
                    "type": p.type,
                    "description": p.description,
                    "default": p.default,
                    "required": p.required,
                    "minimum": p.minimum,
                    "maximum": p.maximum,
                }
                for p in self.params
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SkillSpec:
        """The inverse of :meth:`to_dict`; raises :class:`SkillError` (``bad_spec``) for
        a malformed one (it may come from a peer)."""
        try:
            raw_params = data.get("params", [])
            caps = data.get("capabilities", [])
            if not isinstance(raw_params, list | tuple) or not isinstance(caps, list | tuple):
                raise TypeError("params and capabilities must be lists")
            params = []
            for item in raw_params:
                if not isinstance(item, Mapping):
                    raise TypeError("a parameter must be a mapping")
                params.append(
                    ParamSpec(
                        name=_text(item["name"]),
                        type=_text(item.get("type", "str")),  # type: ignore[arg-type]
                        description=_text(item.get("description", "")),
                        default=item.get("default"),
                        required=bool(item.get("required", False)),
                        minimum=_number(item.get("minimum")),
                        maximum=_number(item.get("maximum")),
                    )
                )
            return cls(
                name=_text(data["name"]),
                description=_text(data.get("description", "")),
                version=_text(data.get("version", "0.0.0")),
                params=tuple(params),
                idempotent=bool(data.get("idempotent", False)),
                capabilities=tuple(_text(c) for c in caps),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SkillError(f"malformed skill spec: {exc}", code="bad_spec") from None

    def param(self, name: str) -> ParamSpec | None:
        """The declared parameter called ``name``, or None."""
        for p in self.params:
            if p.name == name:
                return p
        return None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _known(spec: SkillSpec) -> str:
    return ", ".join(p.name for p in spec.params) or "none"


def _type_word(t: ParamType) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean (true/false)",
        "list[str]": "a list of strings",
    }[t]


def _coerce(spec: SkillSpec, p: ParamSpec, value: object) -> object:
    """``value`` as type ``p.type``; raises :class:`SkillError`."""
    bad = SkillError(
        f"parameter {p.name!r} of skill {spec.name!r} must be {_type_word(p.type)}, got {value!r}"
    )
    if p.type == "str":
        if isinstance(value, str):
            return value
        raise bad
    if p.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        raise bad
    if p.type == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                raise bad from None
        raise bad
    if p.type == "float":
        if isinstance(value, bool):
            raise bad
        number: float
        if isinstance(value, int | float):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(number):
            raise bad
        return number
    # list[str]: a list, or a comma-separated string from the CLI ("" is the empty list).
    if isinstance(value, str):
        return [item.strip() for item in value.split(",")] if value.strip() else []
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return list(value)
    raise bad


def _check_range(spec: SkillSpec, p: ParamSpec, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if p.minimum is not None and value < p.minimum:
        raise SkillError(
            f"parameter {p.name!r} of skill {spec.name!r} must be >= {p.minimum:g}, got {value!r}"
        )
    if p.maximum is not None and value > p.maximum:
        raise SkillError(
            f"parameter {p.name!r} of skill {spec.name!r} must be <= {p.maximum:g}, got {value!r}"
        )


def validate_params(spec: SkillSpec, raw: Mapping[str, object]) -> dict[str, object]:
    """``raw`` checked against ``spec``: values coerced to their declared types (CLI
    strings such as ``"3"`` or ``"true"`` included), ranges checked, defaults filled in.
    Raises :class:`SkillError` (code ``bad_params``) naming the first problem: an unknown
    parameter (with the known ones), a missing required one, a wrong type, a value out of
    range."""
    if not isinstance(raw, Mapping):
        raise SkillError(f"params of skill {spec.name!r} must be a mapping of names to values")
    for key in raw:
        if not isinstance(key, str) or spec.param(key) is None:
            raise SkillError(
                f"unknown parameter {key!r} for skill {spec.name!r}; known: {_known(spec)}"
            )
    out: dict[str, object] = {}
    for p in spec.params:
        if p.name in raw:
            value = _coerce(spec, p, raw[p.name])
            _check_range(spec, p, value)
            out[p.name] = value
        elif p.required:
            raise SkillError(f"missing required parameter {p.name!r} for skill {spec.name!r}")
        elif p.default is not None:
            out[p.name] = p.default
    return out


def parse_command(text: str) -> tuple[str, dict[str, str]]:
    """Split ``"scan-network cidr=10.0.0.0/24 count=3"`` into the skill name and its
    ``key=value`` words (values stay strings: :func:`validate_params` types them). Shell
    quoting is honoured (``echo message="hello world"``). Raises :class:`SkillError` for an
    empty command, unbalanced quotes, a bad skill name, a word without ``=``, an empty or
    bad key, or a key given twice."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise SkillError(f"malformed command {text!r}: {exc}") from None
    if not words:
        raise SkillError("empty command: expected a skill name, then key=value words")
    name, *rest = words
    if "=" in name:
        raise SkillError(
            f"malformed command {text!r}: it must start with the skill name, not {name!r}"
        )
    if not SKILL_NAME.match(name):
        raise SkillError(
            f"bad skill name {name!r}: a letter, then letters, digits, '-', '_' or '.'"
        )
    params: dict[str, str] = {}
    for word in rest:
        key, sep, value = word.partition("=")
        if not sep:
            raise SkillError(f"malformed word {word!r}: expected key=value")
        if not key:
            raise SkillError(f"malformed word {word!r}: empty parameter name before '='")
        if not PARAM_NAME.match(key):
            raise SkillError(
                f"malformed word {word!r}: bad parameter name {key!r} "
                "(a letter or '_', then letters, digits, '_' or '-')"
            )
        if key in params:
            raise SkillError(f"parameter {key!r} given twice")
        params[key] = value
    return name, params
