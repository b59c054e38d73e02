from __future__ import annotations

import pytest

from meshd.errors import MeshError
from meshd.skills.spec import ParamSpec, SkillError, SkillSpec, parse_command, validate_params

SPEC = SkillSpec(
    name="demo",
    params=(
        ParamSpec("text", "str", required=True),
        ParamSpec("count", "int", default=1, minimum=1, maximum=10),
        ParamSpec("ratio", "float", default=0.5, minimum=0, maximum=1),
        ParamSpec("flag", "bool", default=False),
        ParamSpec("tags", "list[str]"),
    ),
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"text": "hi"}, {"text": "hi", "count": 1, "ratio": 0.5, "flag": False}),
        ({"text": "", "count": "3"}, {"text": "", "count": 3, "ratio": 0.5, "flag": False}),
        ({"text": "x", "count": 7}, {"text": "x", "count": 7, "ratio": 0.5, "flag": False}),
        ({"text": "x", "count": " 10 "}, {"text": "x", "count": 10, "ratio": 0.5, "flag": False}),
        ({"text": "x", "ratio": "0.25"}, {"text": "x", "count": 1, "ratio": 0.25, "flag": False}),
        ({"text": "x", "ratio": 1}, {"text": "x", "count": 1, "ratio": 1.0, "flag": False}),
        ({"text": "x", "ratio": "1e-1"}, {"text": "x", "count": 1, "ratio": 0.1, "flag": False}),
        ({"text": "x", "flag": "true"}, {"text": "x", "count": 1, "ratio": 0.5, "flag": True}),
        ({"text": "x", "flag": "FALSE"}, {"text": "x", "count": 1, "ratio": 0.5, "flag": False}),
        ({"text": "x", "flag": "yes"}, {"text": "x", "count": 1, "ratio": 0.5, "flag": True}),
        ({"text": "x", "flag": "0"}, {"text": "x", "count": 1, "ratio": 0.5, "flag": False}),
        ({"text": "x", "flag": True}, {"text": "x", "count": 1, "ratio": 0.5, "flag": True}),
        (
            {"text": "x", "tags": "a, b,c"},
            {"text": "x", "count": 1, "ratio": 0.5, "flag": False, "tags": ["a", "b", "c"]},
        ),
        (
            {"text": "x", "tags": ""},
            {"text": "x", "count": 1, "ratio": 0.5, "flag": False, "tags": []},
        ),
        (
            {"text": "x", "tags": ("p", "q")},
            {"text": "x", "count": 1, "ratio": 0.5, "flag": False, "tags": ["p", "q"]},
        ),
    ],
)
def test_coercion_and_defaults(raw: dict[str, object], expected: dict[str, object]) -> None:
    out = validate_params(SPEC, raw)
    assert out == expected
    for key, value in expected.items():
        assert type(out[key]) is type(value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"text": "x", "colour": "red"},
            "unknown parameter 'colour' for skill 'demo'; known: text, count, ratio, flag, tags",
        ),
        ({}, "missing required parameter 'text' for skill 'demo'"),
        ({"count": 2}, "missing required parameter 'text' for skill 'demo'"),
        ({"text": 5}, "parameter 'text' of skill 'demo' must be a string, got 5"),
        (
            {"text": "x", "count": "three"},
            "parameter 'count' of skill 'demo' must be an integer, got 'three'",
        ),
        (
            {"text": "x", "count": "2.5"},
            "parameter 'count' of skill 'demo' must be an integer, got '2.5'",
        ),
        (
            {"text": "x", "count": 2.0},
            "parameter 'count' of skill 'demo' must be an integer, got 2.0",
        ),
        (
            {"text": "x", "count": True},
            "parameter 'count' of skill 'demo' must be an integer, got True",
        ),
        (
            {"text": "x", "ratio": "half"},
            "parameter 'ratio' of skill 'demo' must be a number, got 'half'",
        ),
        (
            {"text": "x", "ratio": "nan"},
            "parameter 'ratio' of skill 'demo' must be a number, got 'nan'",
        ),
        (
            {"text": "x", "ratio": float("inf")},
            "parameter 'ratio' of skill 'demo' must be a number, got inf",
        ),
        (
            {"text": "x", "ratio": False},
            "parameter 'ratio' of skill 'demo' must be a number, got False",
        ),
        (
            {"text": "x", "flag": "maybe"},
            "parameter 'flag' of skill 'demo' must be a boolean (true/false), got 'maybe'",
        ),
        (
            {"text": "x", "flag": 1},
            "parameter 'flag' of skill 'demo' must be a boolean (true/false), got 1",
        ),
        (
            {"text": "x", "tags": ["a", 1]},
            "parameter 'tags' of skill 'demo' must be a list of strings, got ['a', 1]",
        ),
        (
            {"text": "x", "tags": 3},
            "parameter 'tags' of skill 'demo' must be a list of strings, got 3",
        ),
        ({"text": "x", "count": 0}, "parameter 'count' of skill 'demo' must be >= 1, got 0"),
        ({"text": "x", "count": "11"}, "parameter 'count' of skill 'demo' must be <= 10, got 11"),
        ({"text": "x", "ratio": -0.1}, "parameter 'ratio' of skill 'demo' must be >= 0, got -0.1"),
        ({"text": "x", "ratio": "1.5"}, "parameter 'ratio' of skill 'demo' must be <= 1, got 1.5"),
    ],
)
def test_errors(raw: dict[str, object], message: str) -> None:
    with pytest.raises(SkillError) as info:
        validate_params(SPEC, raw)
    assert str(info.value) == message
    assert info.value.code == "bad_params"
    assert isinstance(info.value, MeshError)


def test_unknown_parameter_of_a_skill_without_params() -> None:
    with pytest.raises(SkillError, match=r"unknown parameter 'x' for skill 'bare'; known: none"):
        validate_params(SkillSpec("bare"), {"x": 1})


def test_not_a_mapping() -> None:
    with pytest.raises(SkillError, match="must be a mapping"):
        validate_params(SPEC, ["text"])  # type: ignore[arg-type]


def test_input_is_not_modified() -> None:
    raw: dict[str, object] = {"text": "x", "count": "2"}
    validate_params(SPEC, raw)
    assert raw == {"text": "x", "count": "2"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "bad parameter name"),
        ({"name": "x", "type": "cidr"}, "unknown type"),
        ({"name": "x", "required": True, "default": "d"}, "required parameter has no default"),
        ({"name": "x", "type": "str", "minimum": 1}, "range needs type int or float"),
        ({"name": "x", "type": "int", "minimum": 5, "maximum": 1}, "minimum above maximum"),
    ],
)
def test_bad_param_specs(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParamSpec(**kwargs)  # type: ignore[arg-type]


def test_bad_skill_specs() -> None:
    with pytest.raises(ValueError, match="bad skill name"):
        SkillSpec("1abc")
    with pytest.raises(ValueError, match="declared twice"):
        SkillSpec("a", params=(ParamSpec("x"), ParamSpec("x")))
    assert SPEC.param("count") is SPEC.params[1]
    assert SPEC.param("nope") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("echo", ("echo", {})),
        ("  sysinfo  ", ("sysinfo", {})),
        (
            "scan-network cidr=10.0.0.0/24 count=3",
            ("scan-network", {"cidr": "10.0.0.0/24", "count": "3"}),
        ),
        ('echo message="hello world"', ("echo", {"message": "hello world"})),
        ("echo 'message=a b'", ("echo", {"message": "a b"})),
        ("echo message=", ("echo", {"message": ""})),
        ("echo message=a=b", ("echo", {"message": "a=b"})),
        ("pack.v2 _x=1 dry-run=true", ("pack.v2", {"_x": "1", "dry-run": "true"})),
    ],
)
def test_parse_command(text: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty command: expected a skill name, then key=value words"),
        ("   ", "empty command: expected a skill name, then key=value words"),
        ("echo message='oops", 'malformed command "echo message=\'oops": No closing quotation'),
        ("cidr=10.0.0.0/24", "it must start with the skill name, not 'cidr=10.0.0.0/24'"),
        ("9lives", "bad skill name '9lives'"),
        ("echo hello", "malformed word 'hello': expected key=value"),
        ("echo =x", "malformed word '=x': empty parameter name before '='"),
        ("echo a.b=1", "malformed word 'a.b=1': bad parameter name 'a.b'"),
        ("echo a=1 a=2", "parameter 'a' given twice"),
    ],
)
def test_parse_command_errors(text: str, message: str) -> None:
    with pytest.raises(SkillError) as info:
        parse_command(text)
    assert message in str(info.value)
    assert info.value.code == "bad_params"


def test_parse_then_validate() -> None:
    name, raw = parse_command("demo text=hi count=3 flag=on tags=a,b")
    assert name == "demo"
    assert validate_params(SPEC, raw) == {
        "text": "hi",
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "tags": ["a", "b"],
    }


def test_spec_round_trip_through_msgpack() -> None:
    import msgpack

    from meshd.skills.builtin import default_registry

    for spec in (SPEC, SkillSpec("caps", capabilities=("net",), idempotent=True, version="2.1.0")):
        wire = msgpack.unpackb(msgpack.packb(spec.to_dict(), use_bin_type=True), raw=False)
        assert SkillSpec.from_dict(wire) == spec
    for spec in default_registry().specs():
        assert SkillSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "malformed skill spec: 'name'"),
        ({"name": 3}, "expected a string, got 3"),
        ({"name": "a b"}, "bad skill name"),
        ({"name": "a", "params": "x"}, "params and capabilities must be lists"),
        ({"name": "a", "params": [1]}, "a parameter must be a mapping"),
        ({"name": "a", "params": [{"type": "int"}]}, "malformed skill spec: 'name'"),
        ({"name": "a", "params": [{"name": "x", "type": "cidr"}]}, "unknown type 'cidr'"),
        ({"name": "a", "params": [{"name": "x", "type": "int", "minimum": "1"}]}, "number"),
        ({"name": "a", "capabilities": [1]}, "expected a string, got 1"),
    ],
)
def test_malformed_spec_from_a_peer(data: dict[str, object], message: str) -> None:
    with pytest.raises(SkillError) as info:
        SkillSpec.from_dict(data)
    assert message in str(info.value)
    assert info.value.code == "bad_spec"
