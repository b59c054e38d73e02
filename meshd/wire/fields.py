"""Field types of the wire tables (:mod:`meshd.wire.schema`), compiled into readers and writers.

The wire format is declared once, as data: every message body and every record that travels
is a :class:`Record`, its dataclass and an ordered list of fields, and every field is a
``(wire key, dataclass attribute, field type)`` row. A field type is an instance of one of
the :class:`Kind` classes below and holds its bounds: ``Int(9)``, ``Str(64, 1)``,
``Bin(32, 32)``, ``HexId("task id", 32, nil=True)``, ``List(TASK_ID, 64)``, a nested
``Record``...

Each kind is compiled, once, at import time, into three functions:

``read(value, path, name)``
    Checks a value as msgpack decoded it and returns the Python value: a dataclass for a
    record, a tuple for an array, a float for a number, an enum member for a choice. A
    violation raises :class:`~meshd.errors.MalformedFrame` whose message starts with the
    value's location, ``path.name``, or ``path[name]`` for an int ``name``
    (``body.copies[3].task.hist[0].at``); a location is only formatted on failure, or
    once per nested record or array.
``write(value, path, name)``
    The wire form of a Python value, checked by the very tests of ``read``: a leaf kind
    writes ``to_wire(value)`` once its ``read`` accepted it, and a record or an array
    runs its items' ``write`` where its ``read`` runs their ``read``. What a node writes
    is thus what every node reads, and writing builds no dataclass.
``to_wire(value)``
    The wire form, unchecked; None where it is the value itself.

The leaf kinds are closures over their bounds. A :class:`Record` generates the source of
its three functions from its table (one line per field, calling the field's own
functions), as :mod:`dataclasses` generates ``__init__``: reading a message costs what the
hand-written code the tables replace cost, and no loop over the fields runs at run time.
Failed checks carry the texts of :func:`bad` (``body.pri: expected int in 0..9, got int
10``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable
from typing import Any, Final

import msgpack  # type: ignore[import-untyped, unused-ignore]

from meshd.errors import MalformedFrame

#: A location step: a map key (``"task"``) or an array index (``3``).
Name = str | int
#: ``read`` / ``write`` of a kind: ``(value, path, name) -> value``.
Reader = Callable[[Any, str, Name], Any]
#: ``to_wire`` of a kind.
Convert = Callable[[Any], Any]

#: What ``dict.get`` returns for a missing key: every check rejects it as ``missing``.
MISSING: Final = object()

_SCALARS: Final = frozenset({bool, float, str, bytes})
_I64_MIN: Final = -(2**63)
_U64_MAX: Final = 2**64 - 1


# ---- locations and error texts -----------------------------------------------------------


def where(path: str, name: Name) -> str:
    """The location ``path.name`` (``path[name]`` for an index; either part may be empty)."""
    if isinstance(name, int):
        return f"{path}[{name}]"
    if not path:
        return name
    return f"{path}.{name}" if name else path


def describe(v: object) -> str:
    """A short description of a wire value for error messages (never its content)."""
    if v is None:
        return "nil"
    if type(v) is bool:
        return f"bool {v}"
    if type(v) is int:
        return f"int {v}" if -(10**20) < v < 10**20 else "int (huge)"
    if type(v) is float:
        return f"float {v!r}"
    if type(v) is str:
        return f"str of {len(v)} chars"
    if type(v) is bytes:
        return f"bin of {len(v)} bytes"
    if type(v) is list:
        return f"array of {len(v)} items"
    if type(v) is dict:
        return f"map of {len(v)} entries"
    return type(v).__name__


def bad(path: str, name: Name, v: object, expected: str) -> MalformedFrame:
    """The error for value ``v`` at ``path.name``, which should have been ``expected``."""
    at = where(path, name)
    if v is MISSING:
        return MalformedFrame(f"{at}: missing")
    return MalformedFrame(f"{at}: expected {expected}, got {describe(v)}")


def packb(obj: object) -> bytes:
    """msgpack bytes of ``obj`` as the protocol writes them (bin for bytes, str for text)."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _enum_value(v: object) -> object:
    # _value_: what the ``value`` property returns, without its descriptor call
    return v._value_ if isinstance(v, enum.Enum) else v


def _then(convert: Convert, read: Reader) -> Reader:
    """``write`` of a leaf kind: the converted value, once ``read`` accepted it."""

    def write(v: Any, path: str, name: Name) -> Any:
        wire = convert(v)
        read(wire, path, name)
        return wire

    return write


# ---- the kinds ---------------------------------------------------------------------------


class Kind:
    """A field type: the values one wire field may hold, and its compiled functions.

    ``wire_type`` is the msgpack type as ``proto/PROTOCOL.md`` names it (``int``, ``str``,
    ``bin``, ``bool``, ``float64``, ``number``, ``map``, ``array``, ``any``); ``nil``: nil
    is accepted too (read as None); ``expected`` describes the values in error messages.
    """

    wire_type: str = ""
    nil: bool = False
    #: ``read`` returns the value it checked, unchanged (not a new object).
    same: bool = True
    expected: str = ""
    read: Reader
    write: Reader
    to_wire: Convert | None = None

    def _compile(self, expected: str, read: Reader, to_wire: Convert | None = None) -> None:
        self.expected = expected
        self.read = read
        self.to_wire = to_wire
        self.write = read if to_wire is None else _then(to_wire, read)


class Int(Kind):
    """An int in ``lo..hi`` (bool is not an int)."""

    wire_type = "int"

    def __init__(self, hi: int, lo: int = 0) -> None:
        self.lo, self.hi = lo, hi
        expected = f"int in {lo}..{hi}"

        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is int and lo <= v <= hi:
                return v
            raise bad(path, name, v, expected)

        self._compile(expected, read)


class Bool(Kind):
    """A bool (0 and 1 are not)."""

    wire_type = "bool"

    def __init__(self) -> None:
        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is bool:
                return v
            raise bad(path, name, v, "bool")

        self._compile("bool", read)


class Float(Kind):
    """A float, finite and >= 0. An int is written as a float, but not read as one."""

    wire_type = "float64"

    def __init__(self) -> None:
        isfinite = math.isfinite

        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is float and isfinite(v) and v >= 0.0:
                return v
            raise bad(path, name, v, "finite float >= 0")

        def to_wire(v: Any) -> Any:
            return float(v) if type(v) is int else v

        self._compile("finite float >= 0", read, to_wire)


class Number(Kind):
    """A finite float in ``0..hi`` (``> 0`` if ``positive``). An int (not a bool) in the
    msgpack range is accepted and read as a float, and is written as a float."""

    wire_type = "number"
    same = False

    def __init__(self, hi: float = math.inf, *, positive: bool = False, nil: bool = False) -> None:
        self.hi, self.positive, self.nil = hi, positive, nil
        if positive:
            base = "finite number > 0"
        elif math.isfinite(hi):
            base = f"number in 0..{hi:g}"
        else:
            base = "finite number >= 0"
        isfinite = math.isfinite

        def read(v: Any, path: str, name: Name) -> Any:
            f = -1.0
            if type(v) is float:
                f = v
            elif type(v) is int and 0 <= v <= _U64_MAX:
                f = float(v)
            elif nil and v is None:
                return None
            if isfinite(f) and (f > 0.0 if positive else f >= 0.0) and f <= hi:
                return f
            # a number out of range is described as such, anything else as "nil or ..."
            is_number = type(v) is int or type(v) is float
            raise bad(path, name, v, base if is_number or not nil else "nil or " + base)

        def to_wire(v: Any) -> Any:
            return float(v) if type(v) is int and 0 <= v <= _U64_MAX else v

        self._compile(("nil or " if nil else "") + base, read, to_wire)


class Str(Kind):
    """A str of ``lo..hi`` chars (Unicode code points). ``expected`` overrides the text of
    error messages."""

    wire_type = "str"

    def __init__(self, hi: int, lo: int = 0, *, nil: bool = False, expected: str = "") -> None:
        self.lo, self.hi, self.nil = lo, hi, nil
        text = ("nil or " if nil else "") + (expected or f"str of {lo}..{hi} chars")

        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is str and lo <= len(v) <= hi:
                return v
            if nil and v is None:
                return None
            raise bad(path, name, v, text)

        self._compile(text, read)


class Bin(Kind):
    """A bin of ``lo..hi`` bytes (``Bin(32, 32)``: exactly 32)."""

    wire_type = "bin"

    def __init__(self, hi: int, lo: int = 0, *, nil: bool = False) -> None:
        self.lo, self.hi, self.nil = lo, hi, nil
        if lo == hi:
            text = f"bin of {hi} bytes"
        else:
            text = f"bin of at most {hi} bytes" if lo == 0 else f"bin of {lo}..{hi} bytes"
        text = ("nil or " if nil else "") + text

        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is bytes and lo <= len(v) <= hi:
                return v
            if nil and v is None:
                return None
            raise bad(path, name, v, text)

        self._compile(text, read)


class Pattern(Kind):
    """A str that ``pattern`` matches in full (``label``: what it is, e.g. ``node id``), of
    ``lo..hi`` chars; ``empty``: ``""`` is accepted too."""

    wire_type = "str"

    def __init__(
        self,
        label: str,
        pattern: str,
        expected: str,
        lo: int,
        hi: int,
        *,
        nil: bool = False,
        empty: bool = False,
    ) -> None:
        self.label, self.lo, self.hi, self.nil, self.empty = label, lo, hi, nil, empty
        self.pattern = re.compile(pattern)
        fullmatch = self.pattern.fullmatch
        text = ("nil or " if nil else "") + expected

        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is str and (fullmatch(v) is not None or (empty and v == "")):
                return v
            if nil and v is None:
                return None
            raise bad(path, name, v, text)

        self._compile(text, read)


class HexId(Pattern):
    """An id of exactly ``chars`` lowercase hex characters (node, task and pack ids)."""

    def __init__(self, label: str, chars: int, *, nil: bool = False, empty: bool = False) -> None:
        expected = f"{label} ({chars} lowercase hex chars)"
        pattern = f"[0-9a-f]{{{chars}}}"
        super().__init__(label, pattern, expected, chars, chars, nil=nil, empty=empty)


class Choice(Kind):
    """One of the values of a str enum, read as its member.

    Written: an enum member as its value, any other value as it is, for the check to judge
    (so a plain str is accepted). ``strict``: written through the enum class instead, so
    that an unknown value raises ValueError already in ``to_wire``.
    """

    wire_type = "str"
    same = False

    def __init__(self, enum_class: type[enum.Enum], *, strict: bool = False) -> None:
        self.enum_class = enum_class
        table: dict[Any, enum.Enum] = {m.value: m for m in enum_class}
        self.choices: tuple[str, ...] = tuple(table)
        text = "one of " + "|".join(table)

        def read(v: Any, path: str, name: Name) -> Any:
            found = table.get(v) if type(v) is str else None
            if found is None:
                raise bad(path, name, v, text)
            return found

        def through_enum(v: Any) -> Any:
            return enum_class(v)._value_

        self._compile(text, read, through_enum if strict else _enum_value)


class List(Kind):
    """An array of at most ``hi`` items of ``item``, read as a tuple. Written from any
    iterable."""

    wire_type = "array"
    same = False

    def __init__(self, item: Kind, hi: int) -> None:
        self.item, self.hi = item, hi
        text = f"array of at most {hi} items"
        read_item, write_item, item_to_wire = item.read, item.write, item.to_wire
        same = item.same

        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is not list or len(v) > hi:
                raise bad(path, name, v, text)
            if not v:
                return ()
            here = where(path, name)
            if same:  # the items are their own values: check them, keep the list
                for i, x in enumerate(v):
                    read_item(x, here, i)
                return tuple(v)
            return tuple([read_item(x, here, i) for i, x in enumerate(v)])

        def write(v: Any, path: str, name: Name) -> Any:
            items = list(v)
            if len(items) > hi:
                raise bad(path, name, items, text)
            here = where(path, name)
            return [write_item(x, here, i) for i, x in enumerate(items)]

        self.expected, self.read, self.write, self.to_wire = text, read, write, list
        if item_to_wire is not None:
            convert = item_to_wire
            self.to_wire = lambda v: [convert(x) for x in v]


#: Longest map key shown in a location (``params.<key>``); a longer one is cut.
_KEY_CHARS: Final = 64


def _key_path(at: str, key: str | bytes) -> str:
    if type(key) is str and key.isidentifier() and len(key) <= _KEY_CHARS:
        return f"{at}.{key}"
    return f"{at}[{key[:_KEY_CHARS]!r}]"


def _is_plain(v: Any) -> bool:
    """True for a msgpack scalar this codec round-trips (ints in -2**63..2**64-1)."""
    t = type(v)
    return v is None or t in _SCALARS or (t is int and _I64_MIN <= v <= _U64_MAX)


def check_value(v: object, at: str, depth: int, max_depth: int) -> None:
    """Check that ``v`` (at location ``at``) is a msgpack value this codec round-trips:
    nil, bool, int in -2**63..2**64-1, float, str, bin, array, or map with str/bin keys,
    nested at most ``max_depth`` arrays/maps deep (``depth``: the containers around ``v``).
    A tuple is accepted as an array (it decodes as a list)."""
    if _is_plain(v):
        return
    if type(v) is int:
        raise MalformedFrame(f"{at}: int out of the msgpack range")
    if type(v) is dict:
        if depth >= max_depth:
            raise MalformedFrame(f"{at}: nested deeper than {max_depth} arrays/maps")
        for k, item in v.items():
            if type(k) is not str and type(k) is not bytes:
                raise MalformedFrame(f"{at}: map key is {describe(k)}, expected str or bin")
            if not _is_plain(item):
                check_value(item, _key_path(at, k), depth + 1, max_depth)
        return
    if type(v) is list or type(v) is tuple:
        if depth >= max_depth:
            raise MalformedFrame(f"{at}: nested deeper than {max_depth} arrays/maps")
        for i, item in enumerate(v):
            if not _is_plain(item):
                check_value(item, f"{at}[{i}]", depth + 1, max_depth)
        return
    if v is MISSING:
        raise MalformedFrame(f"{at}: missing")
    raise MalformedFrame(f"{at}: {type(v).__name__} is not a msgpack value")


class Value(Kind):
    """Any msgpack value (:func:`check_value`), at most ``depth`` arrays/maps deep."""

    wire_type = "any"

    def __init__(self, depth: int) -> None:
        self.depth = depth

        def read(v: Any, path: str, name: Name) -> Any:
            if not _is_plain(v):
                check_value(v, where(path, name), 0, depth)
            return v

        self._compile(f"msgpack value at most {depth} arrays/maps deep", read)


class FreeMap(Kind):
    """A map with str keys and any msgpack values (a task's ``params``, a pack's
    ``manifest``), at most ``depth`` arrays/maps deep counting the map itself, and at most
    ``max_bytes`` msgpack-encoded when given."""

    wire_type = "map"

    def __init__(self, depth: int, max_bytes: int | None = None) -> None:
        self.depth, self.max_bytes = depth, max_bytes

        def read(v: Any, path: str, name: Name) -> Any:
            if type(v) is not dict:
                raise bad(path, name, v, "map")
            for k, item in v.items():
                if type(k) is not str:
                    at = where(path, name)
                    raise MalformedFrame(f"{at}: key is {describe(k)}, expected str")
                if not _is_plain(item):
                    check_value(item, _key_path(where(path, name), k), 1, depth)
            if max_bytes is not None:
                _check_size(v, where(path, name), max_bytes)
            return v

        self._compile("map", read)


def _check_size(v: object, at: str, max_bytes: int) -> None:
    try:
        size = len(packb(v))
    except Exception as exc:  # e.g. a str that is not valid Unicode (encode side only)
        raise MalformedFrame(f"{at}: not encodable as msgpack: {exc!r}") from None
    if size > max_bytes:
        raise MalformedFrame(f"{at}: {size} bytes msgpack-encoded, at most {max_bytes}")


# ---- records ---------------------------------------------------------------------------

#: A table row: ``(wire key, dataclass attribute, kind)``, or ``(key, kind)`` when the
#: attribute has the key's name.
Row = tuple[str, str, Kind] | tuple[str, Kind]


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One field of a record: its wire key, its dataclass attribute and its kind."""

    key: str
    attr: str
    kind: Kind

    @staticmethod
    def of(row: Row) -> Field:
        """The field of a table row."""
        if len(row) == 2:
            key, kind = row
            return Field(key, key, kind)
        return Field(*row)


class Record(Kind):
    """A dataclass and its ordered field table, compiled into a kind.

    On the wire, a map of the fields' keys in table order (required; unknown keys are
    ignored), or with ``array=True`` an array of the fields' values in table order (the
    keys then only name the items in error messages). ``label`` names the record in the
    error for a value that is not a map at the top level (``task: expected map``);
    ``nil``: nil is accepted too. Every ``__init__`` field of the dataclass must be in the
    table. Fields are read and written in table order.

    The table is compiled into ``read``, ``write`` and ``to_wire`` by generating their
    source (kept in ``source``), as :mod:`dataclasses` does for ``__init__``: one line per
    field that calls the field type's own function, so that a record costs no more than a
    hand-written codec (``v["id"]``, ``v.task_id``...) and no loop over the fields runs at
    run time.
    """

    same = False
    to_wire: Convert

    def __init__(
        self,
        cls: type[Any],
        *rows: Row,
        label: str = "",
        array: bool = False,
        nil: bool = False,
    ) -> None:
        self.cls, self.label, self.array, self.nil = cls, label or cls.__name__, array, nil
        self.fields = tuple(Field.of(row) for row in rows)
        self.wire_type = "array" if array else "map"
        init = [f.name for f in dataclasses.fields(cls) if f.init]
        if sorted(f.attr for f in self.fields) != sorted(init):
            raise TypeError(f"field table of {cls.__name__} does not match its fields {init}")
        size = len(self.fields)
        self.expected = ("nil or " if nil else "") + (f"array of {size} items" if array else "map")
        self.source = _record_source(self.fields, init, array, nil)
        namespace: dict[str, Any] = {
            "_cls": cls,
            "_M": MISSING,
            "_where": where,
            "_bad": bad,
            "_label": self.label,
            "_text": self.expected,
        }
        for i, f in enumerate(self.fields):
            namespace.update({f"_r{i}": f.kind.read, f"_w{i}": f.kind.write})
            namespace[f"_c{i}"] = f.kind.to_wire
        exec(compile(self.source, f"<wire table of {cls.__name__}>", "exec"), namespace)
        self.read, self.write, self.to_wire = (
            namespace["read"],
            namespace["write"],
            namespace["to_wire"],
        )


def _record_source(fields: tuple[Field, ...], init: list[str], array: bool, nil: bool) -> str:
    """The source of ``read``, ``write`` and ``to_wire`` of a record (see :class:`Record`).

    ``init``: the dataclass's ``__init__`` parameters, in order. The names the source uses
    are bound by :class:`Record`: ``_cls``, ``_M`` (:data:`MISSING`), ``_bad``, ``_where``,
    ``_label``, ``_text``, and per field ``i`` its kind's ``_r<i>`` (read), ``_w<i>``
    (write) and ``_c<i>`` (to_wire).
    """

    def checks(wire: str, indent: str) -> list[str]:
        # one line per field, in table order: _<i> = the value of field i, read
        return [
            f"{indent}_{i} = _r{i}({wire.format(i=i, key=repr(f.key))}, here, {f.key!r})"
            for i, f in enumerate(fields)
        ]

    def entries(value: Callable[[int, Field], str]) -> list[str]:
        # one line per field of the wire map (or array): its value(i, field)
        key = "" if array else "{key!r}: "
        return [f"        {key.format(key=f.key)}{value(i, f)}," for i, f in enumerate(fields)]

    if array:
        shape, fail = (
            f"type(v) is not list or len(v) != {len(fields)}",
            "_bad(path, name, v, _text)",
        )
        read = checks("v[{i}]", "    ")
    else:
        shape, fail = "type(v) is not dict", '_bad("", _where(path, name) or _label, v, _text)'
        # v[key] is faster than v.get(key, _M); a missing key raises KeyError, and the
        # fields are read again, in order, with v.get: the first bad or missing one raises
        read = [
            "    try:",
            *checks("v[{key}]", "        "),
            "    except KeyError:",
            "        g = v.get",
            *checks("g({key}, _M)", "        "),
        ]
    # values are passed to the dataclass by position (faster than by keyword)
    position = {f.attr: i for i, f in enumerate(fields)}
    built = ", ".join(f"_{position[name]}" for name in init)
    start, end = ("[", "]") if array else ("{", "}")
    # where(path, name), inlined: an item of an array, a field of a record, the top level
    here = (
        '    here = f"{path}[{name}]" if name.__class__ is int else '
        'f"{path}.{name}" if path and name else path or name'
    )
    if_nil = ["    if v is None:", "        return None"] if nil else []
    lines = [
        "def read(v, path, name):",
        f"    if {shape}:",
        *["    " + line for line in if_nil],
        f"        raise {fail}",
        here,
        *read,
        f"    return _cls({built})",
        "",
        "def write(v, path, name):",
        *if_nil,
        here,
        f"    return {start}",
        *entries(lambda i, f: f"_w{i}(v.{f.attr}, here, {f.key!r})"),
        f"    {end}",
        "",
        "def to_wire(v):",
        *if_nil,
        f"    return {start}",
        *entries(lambda i, f: f"v.{f.attr}" if f.kind.to_wire is None else f"_c{i}(v.{f.attr})"),
        f"    {end}",
    ]
    return "\n".join(lines) + "\n"
