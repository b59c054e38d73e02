"""proto/PROTOCOL.md and the codec's field tables (meshd/wire/schema.py) say the same.

The document is read as a person reads it: the message table of section 4 (body keys in
order), the body tables of sections 5, 12.3 and 13.2, the record tables of sections 6, 12.1
and 13.1 (key, dataclass field, msgpack type, limit) and the two records described in
prose (member record, task copy). For every message and record, the keys must be the
table's, in the table's order; for every field, what the document states about its type
and bounds (int range, str length, bin size, array length and items, nil, ``""``, enum
values, nested records, nesting depth, encoded size) must be what the field type checks.
Sections 7 (a summary of the limits) and the behaviour sections are not checked.
"""

from __future__ import annotations

import enum
import math
import re
from pathlib import Path
from typing import Any

import pytest

from meshd.wire import schema
from meshd.wire.fields import (
    Bin,
    Bool,
    Choice,
    Float,
    FreeMap,
    Int,
    Kind,
    List,
    Number,
    Pattern,
    Record,
    Str,
    Value,
)
from meshd.wire.messages import MsgType

DOC = (Path(__file__).resolve().parents[3] / "proto" / "PROTOCOL.md").read_text(encoding="utf-8")

#: Lengths of the named string formats, as section 3 (node id) and section 7 define them.
FORMATS: dict[str, tuple[int, int]] = {
    "node id": (32, 32),
    "task id": (32, 32),
    "pack id": (64, 64),
    "skill name": (1, 64),
}
#: How the document names the records that arrays hold: the records' labels.
RECORD_NAMES = {"member records": "member record", "task copies": "task copy", "pack maps": "pack"}

# ---- reading the document ---------------------------------------------------------------

_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
#: A number as the document writes one: 65535, 2⁶³-1, 64 MiB, 1 MiB - 4 KiB (with U+2212,
#: the minus sign, for "-").
MINUS = "\u2212"
NUM = r"(?:2[⁰¹²³⁴⁵⁶⁷⁸⁹]+\u22121|\d+(?: [KM]iB)?(?: \u2212 \d+ [KM]iB)?)"


def number(text: str) -> int:
    text = text.strip()
    if m := re.fullmatch(r"2([⁰¹²³⁴⁵⁶⁷⁸⁹]+)\u22121", text):
        return 2 ** int(m[1].translate(_SUPERSCRIPTS)) - 1
    if f" {MINUS} " in text:
        first, second = text.split(f" {MINUS} ")
        return number(first) - number(second)
    value, _, unit = text.partition(" ")
    return int(value) * {"": 1, "KiB": 1024, "MiB": 1024 * 1024}[unit]


def section(heading: str) -> str:
    """The text of the section whose heading line starts with ``heading``."""
    m = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#)", DOC, re.M | re.S)
    assert m, f"no section {heading!r} in PROTOCOL.md"
    return m[1]


def table(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table of a section, header row excluded."""
    lines = [line for line in section(heading).splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert len(rows) > 2 and set(rows[1][0]) <= set("-: "), f"no table in {heading!r}"
    return rows[2:]


def ticked(text: str) -> list[str]:
    """The `backticked` words of a cell, in order."""
    return re.findall(r"`([^`]+)`", text)


def facts(type_cell: str, note: str = "") -> dict[str, Any]:
    """What a field's msgpack type cell, and its limit / meaning cell, state about it."""
    t = type_cell.strip()
    f: dict[str, Any] = {}
    if "or nil" in t or t.startswith("nil or"):
        f["nil"] = True
        t = t.replace(" or nil", "").removeprefix("nil or ")
    if t.startswith("any msgpack value"):
        f["type"] = "any"
    elif m := re.fullmatch(r"array \[(.+)\]", t):
        f.update(type="array", items=[x.strip() for x in m[1].split(",")])
        f["item facts"] = item_facts(note)
    elif m := re.fullmatch(rf"array(?: ≤ ({NUM}))? of (.+)", t):
        f["type"] = "array"
        hi = m[1]
        if not hi and (limit := re.match(rf"≤ ({NUM})", note)):  # "≤ 16 entries"
            hi = limit[1]
        if hi:
            f["hi"] = number(hi)
        f["item"] = facts_of_item(m[2], note)
    elif m := re.fullmatch(r"map \((.+)\)", t):
        f.update(type="map", record=m[1])
    elif t == "map, str keys":
        f["type"] = "map"
    else:
        f.update(scalar_facts(t, note))
    if f["type"] in ("map", "any"):
        if m := re.search(r"≤ (\d+) arrays/maps deep", note):
            f["depth"] = int(m[1])
        if m := re.search(rf"≤ ({NUM}) msgpack-encoded", note):
            f["max_bytes"] = number(m[1])
    return f


def scalar_facts(t: str, note: str) -> dict[str, Any]:
    """Facts of an int, str, bin, bool, number or float64 field."""
    base = t.split()[0].rstrip(":")
    assert base in ("int", "str", "bin", "bool", "number", "float64"), t
    f: dict[str, Any] = {"type": base}
    rest = t[len(base) :].strip(" :")
    if m := re.match(r'`""` or (.+)', rest):
        f["empty"] = True
        f["format"] = m[1]
    elif m := re.fullmatch(r"\((.+)\)", rest):
        f["format"] = m[1]
    for name in FORMATS:  # a limit that starts with a format names it
        if note.startswith(name):
            f["format"] = name
    if "format" in f:
        f["lo"], f["hi"] = FORMATS[f["format"]]
    # bounds: in the type cell, else at the start of the limit (or `each`) text
    for text in (rest, note, *re.findall(r"each (≤ [^,;]+)", note)):
        if m := re.match(rf"(?:in )?({NUM})\.\.({NUM})", text):
            f["lo"], f["hi"] = number(m[1]), number(m[2])
        elif m := re.match(rf"≤ ({NUM})", text):
            f["lo"], f["hi"] = 0, number(m[1])
        elif m := re.fullmatch(r"(\d+)", text):
            f["lo"] = f["hi"] = int(m[1])
        elif m := re.match(r"(?:finite, )?([>≥]) 0", text):
            f["lo"], f["positive"] = 0, m[1] == ">"
        else:
            continue
        break
    if m := re.search(rf"; ≤ ({NUM}) chars", note):  # a skill name's "...; ≤ 64 chars"
        f["hi"] = number(m[1])
    if base == "str" and not rest and re.fullmatch(r"`\w+`(, `\w+`)*", note):
        f["choices"] = set(ticked(note))  # a str whose values are listed
    return f


def facts_of_item(text: str, note: str) -> dict[str, Any]:
    """Facts of the items of an array (``member records``, ``str ≤ 64``, ``[a, b]``...)."""
    if text in RECORD_NAMES:
        return {"type": "map", "record": RECORD_NAMES[text]}
    if text == "skill names":
        return scalar_facts("str", "skill name")
    if text.startswith("["):
        return facts(f"array {text}", note.partition(";")[2])
    each = re.search(r"each (≤ [^,;]+)", note)
    return scalar_facts(text, each[1] if each else "")


def item_facts(note: str) -> dict[str, dict[str, Any]]:
    """Facts a limit text states about the items of a fixed-length array: ``each nil or
    str ≤ 64``, or ```pct` a number in 0..100, `message` str ≤ 500``."""
    if m := re.match(r"each (nil or )?str (≤ \d+)", note):
        return {"*": facts(f"{m[1] or ''}str", m[2])}
    found = {}
    for m in re.finditer(r"`(\w+)` (a number[^,;]*|str ≤ \d+)", note):
        if m[2].startswith("a number"):
            found[m[1]] = scalar_facts("number", m[2].removeprefix("a number "))
        else:
            found[m[1]] = scalar_facts("str", m[2][4:])
    return found


# ---- what the tables say ---------------------------------------------------------------


def kind_facts(kind: Kind) -> dict[str, Any]:
    """The facts of a field type, named as :func:`facts` names them."""
    f: dict[str, Any] = {"type": kind.wire_type, "nil": kind.nil}
    if isinstance(kind, Record):
        if kind.array:
            f["items"] = [field.key for field in kind.fields]
        else:
            f["record"] = kind.label
    elif isinstance(kind, Int):
        f.update(lo=kind.lo, hi=kind.hi)
    elif isinstance(kind, Number | Float):
        positive = isinstance(kind, Number) and kind.positive
        f.update(lo=0, positive=positive, hi=kind.hi if isinstance(kind, Number) else math.inf)
    elif isinstance(kind, Str | Bin):
        f.update(lo=kind.lo, hi=kind.hi)
    elif isinstance(kind, Pattern):
        f.update(lo=kind.lo, hi=kind.hi, format=kind.label, empty=kind.empty)
    elif isinstance(kind, Choice):
        f["choices"] = set(kind.choices)
    elif isinstance(kind, List):
        f.update(hi=kind.hi, item=kind_facts(kind.item))
    elif isinstance(kind, Value | FreeMap):
        f["depth"] = kind.depth
        if isinstance(kind, FreeMap) and kind.max_bytes is not None:
            f["max_bytes"] = kind.max_bytes
    else:
        assert isinstance(kind, Bool), kind
    return f


#: Facts the document must state, by type (beyond the type itself).
REQUIRED = {
    "int": {"lo", "hi"},
    "bin": {"lo", "hi"},
    "number": {"lo"},
    "float64": {"lo"},
    "array": {"hi", "item"},
}


def check(where: str, stated: dict[str, Any], kind: Kind) -> None:
    """Every fact the document states about a field is true of its kind, and the document
    states the field's bounds (and those of its items)."""
    actual = kind_facts(kind)
    for key, value in stated.items():
        if key == "item":
            assert isinstance(kind, List), f"{where}: not an array of items"
            check(f"{where}[]", value, kind.item)
        elif key == "item facts":  # a fixed-length array: what it says of its items
            assert isinstance(kind, Record), f"{where}: not a fixed-length array"
            items = {f.key: f.kind for f in kind.fields}
            for item, item_stated in value.items():
                for name in items if item == "*" else [item]:
                    assert name in items, f"{where}: no item {name}"
                    check(f"{where}.{name}", item_stated, items[name])
        else:
            assert actual.get(key, False) == value, (
                f"{where}: PROTOCOL.md says {key} {value!r}, the table {actual.get(key)!r}"
            )
    for key in ("nil", "empty"):  # what the field accepts besides its type is stated
        assert stated.get(key, False) == actual.get(key, False), f"{where}: {key}"
    missing = REQUIRED.get(actual["type"], set()) - set(stated)
    if actual["type"] == "str":
        missing = set() if {"hi", "choices"} & set(stated) else {"hi or values"}
    if "items" in actual:  # a fixed-length array: its items, not a length
        missing = set() if "items" in stated else {"items"}
    assert not missing, f"{where}: PROTOCOL.md does not state {sorted(missing)}"


class _Letters(enum.StrEnum):
    A = "a"
    C = "c"


# ---- the checks ------------------------------------------------------------------------


def documented_bodies() -> dict[MsgType, list[tuple[str, str, str]]]:
    """(key, type cell, meaning cell) of every body field of sections 5, 12.3 and 13.2."""
    bodies: dict[MsgType, list[tuple[str, str, str]]] = {}
    types: list[MsgType] = []
    for heading in ("5. Bodies", "12.3 Bodies", "13.2 Bodies"):
        for type_cell, key_cell, msgpack_type, meaning in table(heading):
            if type_cell:
                types = [MsgType[name.strip()] for name in type_cell.split(",")]
            for key in ticked(key_cell):
                for msg_type in types:
                    bodies.setdefault(msg_type, []).append((key, msgpack_type, meaning))
    return bodies


BODIES = documented_bodies()


def test_every_message_type_is_documented() -> None:
    rows = table("4. Messages")
    assert [(int(r[0]), r[1]) for r in rows] == [(int(t), t.name) for t in MsgType]
    assert set(BODIES) == set(MsgType)
    assert set(schema.BODIES) == set(MsgType)


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_message_keys_in_order(msg_type: MsgType) -> None:
    keys = [f.key for f in schema.BODIES[msg_type].fields]
    (row,) = [r for r in table("4. Messages") if r[1] == msg_type.name]
    assert ticked(row[3]) == keys, "section 4, Body keys"
    assert [key for key, _, _ in BODIES[msg_type]] == keys, "body table"


@pytest.mark.parametrize("msg_type", list(MsgType), ids=lambda t: t.name)
def test_message_field_bounds(msg_type: MsgType) -> None:
    fields = {f.key: f.kind for f in schema.BODIES[msg_type].fields}
    for key, msgpack_type, meaning in BODIES[msg_type]:
        check(f"{msg_type.name}.{key}", facts(msgpack_type, meaning), fields[key])


@pytest.mark.parametrize(
    ("heading", "record"),
    [
        ("6. Member info", schema.MEMBER_INFO),
        ("12.1 Task map", schema.TASK),
        ("13.1 Pack map", schema.PACK_INFO),
    ],
    ids=["member info", "task", "pack"],
)
def test_record_tables(heading: str, record: Record) -> None:
    rows = table(heading)
    assert [(ticked(r[0]), ticked(r[1])) for r in rows] == [
        ([f.key], [f.attr]) for f in record.fields
    ], "keys and dataclass fields, in order"
    for field, (_, _, msgpack_type, limit) in zip(record.fields, rows, strict=True):
        check(f"{record.label}.{field.key}", facts(msgpack_type, limit), field.kind)


def test_member_record() -> None:
    text = " ".join(section("6. Member info").split())
    sentence = r'Member record — `\{"m": <member info>, "s": <state>\}` with `s` one of the str'
    m = re.search(sentence + r" values ((?:`\w+`, )*`\w+`)", text)
    assert m, "the member record sentence of section 6"
    assert [f.key for f in schema.MEMBER_RECORD.fields] == ["m", "s"]
    info, state = (f.kind for f in schema.MEMBER_RECORD.fields)
    assert info is schema.MEMBER_INFO
    check("member record.s", {"type": "str", "choices": set(ticked(m[1]))}, state)


def test_task_copy() -> None:
    text = " ".join(section("12.2 Task copies").split())
    m = re.search(r"is `\{(.+?)\}` \(both ints (\S+)\)", text)
    assert m, "the task copy sentence of section 12.2"
    entries = re.findall(r'"(\w+)": (int|<task map>)', m[1])
    assert [key for key, _ in entries] == [f.key for f in schema.TASK_COPY.fields], "keys"
    lo, hi = m[2].split("..")
    for (key, kind_name), field in zip(entries, schema.TASK_COPY.fields, strict=True):
        if kind_name == "int":
            check(
                f"task copy.{key}", {"type": "int", "lo": number(lo), "hi": number(hi)}, field.kind
            )
        else:
            assert field.kind is schema.TASK


def test_reader_of_the_document() -> None:
    # the reader itself: numbers and cells as the document writes them
    assert number(f"2⁶³{MINUS}1") == 2**63 - 1 and number(f"2³¹{MINUS}1") == 2**31 - 1
    assert number("64 MiB") == 64 * 1024 * 1024 and number(f"1 MiB {MINUS} 4 KiB") == 1044480
    assert facts(f"int 0..2⁶³{MINUS}1") == {"type": "int", "lo": 0, "hi": 2**63 - 1}
    assert facts("bin ≤ 256 KiB or nil") == {"type": "bin", "nil": True, "lo": 0, "hi": 262144}
    assert facts('str: `""` or node id')["empty"] is True
    assert facts("array ≤ 10000 of str 32")["item"] == {"type": "str", "lo": 32, "hi": 32}
    assert facts("str", "`a`, `b`") == {"type": "str", "choices": {"a", "b"}}
    assert facts("array [pct, message]", "`pct` a number in 0..100, `message` str ≤ 500") == {
        "type": "array",
        "items": ["pct", "message"],
        "item facts": {
            "pct": {"type": "number", "lo": 0, "hi": 100},
            "message": {"type": "str", "lo": 0, "hi": 500},
        },
    }
    # and a change on one side is caught
    with pytest.raises(AssertionError):
        check("x", facts(f"int 0..2³¹{MINUS}1"), schema.U63)
    with pytest.raises(AssertionError):
        check("x", facts("str 0..64"), Str(65))
    with pytest.raises(AssertionError):
        check("x", facts("str", "`a`, `b`"), Choice(_Letters))
    with pytest.raises(AssertionError):
        check("x", facts("str 0..64"), Str(64, nil=True))  # nil not stated
    with pytest.raises(AssertionError):
        check("x", facts("int"), schema.U63)  # no bounds stated
