"""The control op table (meshd.daemon.control): request parsing and error mapping, with
Services built from fakes."""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Union, cast, get_args, get_origin, get_type_hints

import pytest

from meshd.daemon.control import (
    MAX_ITEMS,
    MAX_TEXT,
    OPS,
    DelegateReq,
    PeerPingReq,
    Services,
    TaskWatchReq,
    dispatch,
    parse,
    process_info,
)
from meshd.daemon.delegation import MAX_WAIT
from meshd.errors import ControlError, MeshError, RequestError, StoreError
from meshd.tasks.model import TaskError

NODE = "ab" * 16

Call = tuple[Any, ...]


# ---- fakes ---------------------------------------------------------------------------------


class FakeEvents:
    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls

    async def wait(self, since: float, timeout: float) -> list[dict[str, Any]]:
        self.calls.append(("events.wait", since, timeout))
        return [{"type": "X", "at": since + 1}]


class FakeDelegation:
    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls
        self.resolve_error: Exception | None = None

    async def delegate(self, args: Mapping[str, Any], wait: float = 0.0) -> dict[str, Any]:
        self.calls.append(("delegate", dict(args), wait))
        return {"id": "t1"}

    async def delegate_many(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        self.calls.append(("delegate_many", list(items)))
        return [{"id": "t1"}]

    def resolve_task(self, ref: str) -> str:
        self.calls.append(("resolve_task", ref))
        if self.resolve_error is not None:
            raise self.resolve_error
        return f"full-{ref}"

    def view(self, task_id: str) -> dict[str, Any]:
        self.calls.append(("view", task_id))
        return {"id": task_id}

    def listing(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("listing", state, limit))
        return []

    async def watch(self, task_id: str, after: list[int] | None, wait: float) -> dict[str, Any]:
        self.calls.append(("watch", task_id, after, wait))
        return {"id": task_id}

    async def operator(self, op: str, ref: str, target: str = "") -> dict[str, Any]:
        self.calls.append(("operator", op, ref, target))
        return {"ok": True}


class FakePacks:
    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls

    def _rec(self, *call: Any) -> dict[str, Any]:
        self.calls.append(call)
        return {"done": call[0]}

    def listing(self, mesh: bool) -> Any:
        return self._rec("listing", mesh)

    def describe(self, name: str) -> Any:
        return self._rec("describe", name)

    def read_file(self, path: str) -> bytes:
        self.calls.append(("read_file", path))
        return b"PACK:" + path.encode()

    def inspect_file(self, data: bytes) -> Any:
        self.calls.append(("inspect_file", data))
        spec = SimpleNamespace(name="demo", version="1.2.0", to_dict=lambda: {"name": "demo"})
        return SimpleNamespace(
            manifest=SimpleNamespace(spec=spec),
            pack_id="f" * 64,
            signer=b"\x01" * 32,
            files={"b.py": b"", "a.py": b""},
        )

    def trusted(self, key: bytes) -> bool:
        return True

    def build(self, folder: str) -> bytes:
        self.calls.append(("build", folder))
        return b"PACKDATA"

    def install_bytes(self, data: bytes, source: str) -> Any:
        return self._rec("install_bytes", data, source)

    async def install_from_mesh(self, name: str) -> Any:
        return self._rec("install_from_mesh", name)

    def remove(self, name: str) -> Any:
        return self._rec("remove", name)

    def publish(self, name: str) -> Any:
        return self._rec("publish", name)

    def trust_add(self, key: str, note: str = "", revoker: bool = False) -> Any:
        return self._rec("trust_add", key, note, revoker)

    def trust_remove(self, key: str) -> Any:
        return self._rec("trust_remove", key)

    def trust_list(self) -> Any:
        return self._rec("trust_list")

    def revoke(self, keys: list[str], packs: list[str]) -> Any:
        return self._rec("revoke", keys, packs)


class Node:
    """The node-level callables of Services, recording their calls."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.status_error: BaseException | None = None
        self.resolve_error: Exception | None = None
        self.events = FakeEvents(self.calls)
        self.delegation = FakeDelegation(self.calls)
        self.packs = FakePacks(self.calls)

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        if self.status_error is not None:
            raise self.status_error
        return {"node": NODE}

    def ping(self) -> dict[str, Any]:
        return process_info(NODE)

    async def peer_ping(self, peer: str, timeout: float) -> float:
        self.calls.append(("peer_ping", peer, timeout))
        return 0.001

    def resolve_peer(self, ref: str) -> str:
        self.calls.append(("resolve_peer", ref))
        if self.resolve_error is not None:
            raise self.resolve_error
        return f"id-of-{ref}"

    def lead_request(self, target: str) -> dict[str, Any]:
        self.calls.append(("lead_request", target))
        return {"requested": target}

    def audit(self, since: float, kind: str | None) -> list[dict[str, Any]]:
        self.calls.append(("audit", since, kind))
        return []

    def quarantine(self) -> list[dict[str, Any]]:
        self.calls.append(("quarantine",))
        return [{"table": "meta", "key": "term"}]

    def quarantine_clear(self) -> int:
        self.calls.append(("quarantine_clear",))
        return 1

    def services(self) -> Services:
        return Services(
            status=self.status,
            ping=self.ping,
            peer_ping=self.peer_ping,
            resolve_peer=self.resolve_peer,
            lead_request=self.lead_request,
            audit=self.audit,
            quarantine=self.quarantine,
            quarantine_clear=self.quarantine_clear,
            events=cast(Any, self.events),
            delegation=cast(Any, self.delegation),
            packs=cast(Any, self.packs),
        )

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


@pytest.fixture
def node() -> Node:
    return Node()


# ---- parse: every request type ------------------------------------------------------------

REQUEST_TYPES = sorted({op.request for op in OPS.values()}, key=lambda c: c.__name__)


def _base(hint: Any) -> Any:
    """``hint`` without its ``| None``."""
    if get_origin(hint) in (Union, types.UnionType):
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


def _bad_values(hint: Any) -> list[tuple[str, Any]]:
    t = _base(hint)
    origin = get_origin(t)
    if t is int:
        return [("str", "3"), ("bool", True), ("float", 1.5), ("huge", 2**63)]
    if t is float:
        return [
            ("str", "1.5"),
            ("bool", False),
            ("nan", math.nan),
            ("inf", math.inf),
            ("-inf", -math.inf),
            ("list", [1.0]),
        ]
    if t is str:
        return [("int", 5), ("bytes", b"x"), ("too_long", "x" * (MAX_TEXT + 1))]
    if t is bool:
        return [("int", 1), ("str", "true")]
    if origin is list:
        (item,) = get_args(t)
        good_item: Any = {"str": "a", "int": 1}.get(getattr(item, "__name__", ""), {})
        bad_item: Any = 1 if item is str else "x"
        return [
            ("str", "abc"),
            ("dict", {"a": 1}),
            ("bad_item", [good_item, bad_item]),
            ("too_many", [good_item] * (MAX_ITEMS + 1)),
        ]
    if origin is dict:
        return [("list", []), ("str", "x"), ("int_key", {1: "a"})]
    raise AssertionError(f"no bad values for {hint!r}")


def _good_value(hint: Any) -> tuple[Any, Any]:
    """(a valid argument, what the request holds for it)."""
    t = _base(hint)
    origin = get_origin(t)
    if t is int:
        return 7, 7
    if t is float:
        return 2, 2.0
    if t is str:
        return "x" * MAX_TEXT, "x" * MAX_TEXT
    if t is bool:
        return True, True
    if origin is list:
        (item,) = get_args(t)
        one: Any = {"str": "a", "int": 1}.get(getattr(item, "__name__", ""), {"k": 1})
        return (one,) * MAX_ITEMS, [one] * MAX_ITEMS  # a tuple is taken as a list
    if origin is dict:
        return {"k": [1, {"x": None}]}, {"k": [1, {"x": None}]}
    raise AssertionError(f"no good value for {hint!r}")


def _field_cases() -> list[Any]:
    cases = []
    for cls in REQUEST_TYPES:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for label, value in _bad_values(hints[f.name]):
                cases.append(
                    pytest.param(cls, f.name, value, id=f"{cls.__name__}.{f.name}-{label}")
                )
    return cases


def _fields() -> list[Any]:
    return [
        pytest.param(cls, f.name, id=f"{cls.__name__}.{f.name}")
        for cls in REQUEST_TYPES
        for f in dataclasses.fields(cls)
    ]


@pytest.mark.parametrize("cls", REQUEST_TYPES, ids=lambda c: c.__name__)
def test_parse_with_no_args_gives_the_defaults(cls: type[Any]) -> None:
    assert parse(cls, {}) == cls()


@pytest.mark.parametrize("cls", REQUEST_TYPES, ids=lambda c: c.__name__)
def test_parse_none_means_the_default(cls: type[Any]) -> None:
    assert parse(cls, {f.name: None for f in dataclasses.fields(cls)}) == cls()


@pytest.mark.parametrize(("cls", "name"), _fields())
def test_parse_accepts_a_valid_value(cls: type[Any], name: str) -> None:
    arg, held = _good_value(get_type_hints(cls)[name])
    req = parse(cls, {name: arg})
    value = getattr(req, name)
    assert value == held
    assert type(value) is type(held)


@pytest.mark.parametrize(("cls", "name", "value"), _field_cases())
def test_parse_refuses_a_wrong_value_naming_the_field(
    cls: type[Any], name: str, value: Any
) -> None:
    with pytest.raises(RequestError) as info:
        parse(cls, {name: value})
    assert info.value.code == "bad_request"
    assert repr(name) in str(info.value) or f"'{name}[" in str(info.value)


def test_parse_names_the_bad_item_of_a_list() -> None:
    with pytest.raises(RequestError, match=r"'after\[1\]'"):
        parse(TaskWatchReq, {"after": [1, "2"]})
    with pytest.raises(RequestError, match=r"'tasks\[0\]'"):
        parse(OPS["delegate_many"].request, {"tasks": [["not", "a", "map"]]})


def test_parse_refuses_a_non_str_key_in_a_dict() -> None:
    with pytest.raises(RequestError, match="'params'") as info:
        parse(DelegateReq, {"params": {"ok": 1, 2: "no"}})
    assert info.value.code == "bad_request"


def test_parse_limits_are_inclusive() -> None:
    assert parse(PeerPingReq, {"peer": "p" * MAX_TEXT}).peer == "p" * MAX_TEXT
    assert parse(PeerPingReq, {"count": 2**63 - 1}).count == 2**63 - 1
    assert parse(PeerPingReq, {"count": -(2**63) + 1}).count == -(2**63) + 1
    with pytest.raises(RequestError):
        parse(PeerPingReq, {"count": -(2**63)})


def test_parse_turns_an_int_into_a_float_for_a_float_field() -> None:
    req = parse(PeerPingReq, {"timeout": 3})
    assert req.timeout == 3.0
    assert isinstance(req.timeout, float)


def test_parse_keeps_optional_fields_none_or_checked() -> None:
    assert parse(DelegateReq, {"role": None}).role is None
    assert parse(DelegateReq, {"role": "dev"}).role == "dev"
    with pytest.raises(RequestError, match="'role'"):
        parse(DelegateReq, {"role": 3})


# ---- dispatch: op table and error mapping ---------------------------------------------------


async def test_unknown_op_is_unknown_op(node: Node) -> None:
    with pytest.raises(ControlError) as info:
        await dispatch(node.services(), "reboot_everything", {})
    assert info.value.code == "unknown_op"
    assert node.calls == []


async def test_a_bad_argument_is_bad_request_and_nothing_runs(node: Node) -> None:
    with pytest.raises(ControlError, match="'count'") as info:
        await dispatch(node.services(), "peer_ping", {"peer": "p", "count": "3"})
    assert info.value.code == "bad_request"
    assert node.calls == []


async def test_a_request_error_keeps_its_code(node: Node) -> None:
    node.resolve_error = RequestError("unknown peer 'zz'; known peers: none", "unknown_peer")
    with pytest.raises(ControlError) as info:
        await dispatch(node.services(), "peer_ping", {"peer": "zz"})
    assert info.value.code == "unknown_peer"
    assert str(info.value) == "unknown peer 'zz'; known peers: none"
    assert info.value.__cause__ is None


async def test_a_task_error_is_refused(node: Node) -> None:
    node.delegation.resolve_error = TaskError("no task matches 'ab12'")
    with pytest.raises(ControlError) as info:
        await dispatch(node.services(), "task_get", {"id": "ab12"})
    assert info.value.code == "refused"
    assert str(info.value) == "no task matches 'ab12'"


async def test_another_mesh_error_is_error(node: Node) -> None:
    node.status_error = StoreError("the store is full")
    with pytest.raises(ControlError) as info:
        await dispatch(node.services(), "status", {})
    assert info.value.code == "error"
    assert str(info.value) == "the store is full"


async def test_a_control_error_from_a_handler_keeps_its_code(node: Node) -> None:
    node.status_error = ControlError("lead did not answer", code="timeout")
    with pytest.raises(ControlError) as info:
        await dispatch(node.services(), "status", {})
    assert info.value is node.status_error
    assert info.value.code == "timeout"


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyError("k"), ValueError("v")])
async def test_a_non_mesh_error_propagates_unchanged(node: Node, exc: Exception) -> None:
    node.status_error = exc
    with pytest.raises(type(exc)) as info:
        await dispatch(node.services(), "status", {})
    assert info.value is exc
    assert not isinstance(info.value, MeshError)


# ---- peer_ping bounds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {"count": 0},
        {"count": 10_001},
        {"count": -1},
        {"timeout": 0},
        {"timeout": 61},
        {"timeout": -1.0},
        {"timeout": 60.0001},
    ],
    ids=repr,
)
async def test_peer_ping_out_of_bounds_is_refused(node: Node, args: dict[str, Any]) -> None:
    with pytest.raises(ControlError) as info:
        await dispatch(node.services(), "peer_ping", {"peer": "p", **args})
    assert info.value.code == "bad_request"
    assert "peer_ping" not in node.names()
    assert "resolve_peer" not in node.names()


async def test_peer_ping_pings_count_times_the_resolved_peer(node: Node) -> None:
    out = await dispatch(node.services(), "peer_ping", {"peer": "p", "count": 3, "timeout": 60})
    assert out == {"peer": "id-of-p", "rtt_s": [0.001] * 3}
    assert node.calls == [("resolve_peer", "p")] + [("peer_ping", "id-of-p", 60.0)] * 3


async def test_peer_ping_accepts_the_bounds(node: Node) -> None:
    out = await dispatch(node.services(), "peer_ping", {"peer": "p", "count": 10_000})
    assert len(out["rtt_s"]) == 10_000
    out = await dispatch(node.services(), "peer_ping", {"peer": "p", "timeout": 1e-9})
    assert len(out["rtt_s"]) == 1


# ---- what each op reaches ------------------------------------------------------------------------


async def test_status_and_ping(node: Node) -> None:
    assert await dispatch(node.services(), "status", {}) == {"node": NODE}
    pong = await dispatch(node.services(), "ping", {})
    assert pong["pong"] is True
    assert pong["node"] == NODE
    assert isinstance(pong["pid"], int)


@pytest.mark.parametrize(("wait", "timeout"), [(None, 0.0), (-5, 0.0), (2.5, 2.5), (1e9, MAX_WAIT)])
async def test_events_wait_is_clamped(node: Node, wait: Any, timeout: float) -> None:
    out = await dispatch(node.services(), "events", {"since": 12.5, "wait": wait})
    assert node.calls == [("events.wait", 12.5, timeout)]
    assert out == [{"type": "X", "at": 13.5}]


async def test_audit_passes_since_and_type(node: Node) -> None:
    await dispatch(node.services(), "audit", {"since": 3, "type": "LEAD_ELECTED"})
    await dispatch(node.services(), "audit", {})
    assert node.calls == [("audit", 3.0, "LEAD_ELECTED"), ("audit", 0.0, None)]


async def test_quarantine_list_and_clear(node: Node) -> None:
    assert await dispatch(node.services(), "quarantine_list", {}) == [
        {"table": "meta", "key": "term"}
    ]
    assert await dispatch(node.services(), "quarantine_clear", {}) == {"cleared": 1}
    assert node.calls == [("quarantine",), ("quarantine_clear",)]


async def test_lead_transfer_and_step_down(node: Node) -> None:
    assert await dispatch(node.services(), "lead_transfer", {"target": "n2"}) == {"requested": "n2"}
    await dispatch(node.services(), "lead_step_down", {})
    assert node.calls == [("lead_request", "n2"), ("lead_request", "")]


async def test_delegate_passes_every_field_and_a_non_negative_wait(node: Node) -> None:
    args = {"skill": "echo", "params": {"message": "hi"}, "priority": 7, "wait": -3}
    assert await dispatch(node.services(), "delegate", args) == {"id": "t1"}
    ((name, passed, wait),) = node.calls
    assert name == "delegate"
    assert passed == {**dataclasses.asdict(DelegateReq()), **args}
    assert wait == 0.0


async def test_delegate_many_passes_the_tasks(node: Node) -> None:
    tasks = [{"skill": "echo"}, {"skill": "sleep"}]
    await dispatch(node.services(), "delegate_many", {"tasks": tasks})
    assert node.calls == [("delegate_many", tasks)]


async def test_task_get_watch_list_resolve_the_id(node: Node) -> None:
    s = node.services()
    assert await dispatch(s, "task_get", {"id": "ab"}) == {"id": "full-ab"}
    await dispatch(s, "task_watch", {"id": "cd", "after": [3], "wait": 1})
    await dispatch(s, "task_list", {"state": "running"})
    assert node.calls == [
        ("resolve_task", "ab"),
        ("view", "full-ab"),
        ("resolve_task", "cd"),
        ("watch", "full-cd", [3], 1.0),
        ("listing", "running", 100),
    ]


@pytest.mark.parametrize(
    ("op", "args", "call"),
    [
        ("task_cancel", {"id": "t"}, ("operator", "cancel", "t", "")),
        ("task_retry", {"id": "t"}, ("operator", "retry", "t", "")),
        ("task_retry", {"id": "t", "force": True}, ("operator", "retry_force", "t", "")),
        ("task_approve", {"id": "t"}, ("operator", "approve", "t", "")),
        ("task_handoff", {"id": "t", "to": "n2"}, ("operator", "handoff", "t", "n2")),
        ("task_deny", {"id": "t", "reason": "no"}, ("operator", "deny", "t", "no")),
        ("skill_list", {"mesh": True}, ("listing", True)),
        ("skill_describe", {"name": "echo"}, ("describe", "echo")),
        ("skill_install", {"name": "demo"}, ("install_from_mesh", "demo")),
        ("skill_remove", {"name": "demo"}, ("remove", "demo")),
        ("skill_publish", {"name": "demo"}, ("publish", "demo")),
        ("skill_trust_add", {"key": "k", "note": "n"}, ("trust_add", "k", "n", False)),
        (
            "skill_trust_add",
            {"key": "k", "revoker": True},
            ("trust_add", "k", "", True),
        ),
        ("skill_trust_remove", {"key": "k"}, ("trust_remove", "k")),
        ("skill_trust_list", {}, ("trust_list",)),
        ("skill_revoke", {"keys": ["k"]}, ("revoke", ["k"], [])),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_op_reaches_its_handler(
    node: Node, op: str, args: dict[str, Any], call: Call
) -> None:
    await dispatch(node.services(), op, args)
    assert node.calls == [call]


async def test_skill_install_from_a_file(node: Node) -> None:
    await dispatch(node.services(), "skill_install", {"file": "/tmp/x.pack"})
    assert node.calls == [
        ("read_file", "/tmp/x.pack"),
        ("install_bytes", b"PACK:/tmp/x.pack", "file /tmp/x.pack"),
    ]


async def test_skill_describe_of_a_file_inspects_it(node: Node) -> None:
    out = await dispatch(node.services(), "skill_describe", {"file": "/tmp/x.pack"})
    assert out == {
        "name": "demo",
        "pack_id": "f" * 64,
        "signer": "01" * 32,
        "signer_trusted": True,
        "files": ["a.py", "b.py"],
    }


async def test_skill_pack_writes_the_pack(node: Node, tmp_path: Path) -> None:
    out = await dispatch(node.services(), "skill_pack", {"dir": "src", "cwd": str(tmp_path)})
    path = tmp_path / "demo-1.2.0.pack"
    assert out == {
        "path": str(path),
        "name": "demo",
        "size": 8,
        "version": "1.2.0",
        "pack_id": "f" * 64,
    }
    assert path.read_bytes() == b"PACKDATA"


async def test_skill_pack_that_cannot_be_written_is_bad_request(node: Node, tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "x.pack"
    with pytest.raises(ControlError, match="cannot write") as info:
        await dispatch(node.services(), "skill_pack", {"dir": "src", "out": str(out)})
    assert info.value.code == "bad_request"


def test_every_op_has_a_dataclass_request() -> None:
    for name, op in OPS.items():
        assert dataclasses.is_dataclass(op.request), name
        assert callable(op.handler), name
