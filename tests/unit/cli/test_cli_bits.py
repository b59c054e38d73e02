from __future__ import annotations

import pytest

from meshd.cli.render import ago, status_table
from meshd.config import parse_hostport
from meshd.control_proto import MAX_CONTROL_MESSAGE, header_length, pack, unpack
from meshd.errors import ConfigError


def test_parse_hostport() -> None:
    assert parse_hostport("10.0.0.1:7000", 7790) == ("10.0.0.1", 7000)
    assert parse_hostport("10.0.0.1", 7790) == ("10.0.0.1", 7790)
    assert parse_hostport("[fe80::1]:7000", 7790) == ("fe80::1", 7000)
    assert parse_hostport("::1", 7790) == ("::1", 7790)
    for bad, match in [(":7000", "missing host"), ("h:x", "not a number"), ("h:70000", "0..65535")]:
        with pytest.raises(ConfigError, match=match):
            parse_hostport(bad, 7790)


def test_control_framing() -> None:
    data = pack({"v": 1, "op": "status", "args": {}})
    assert header_length(data[:4]) == len(data) - 4
    assert unpack(data[4:]) == {"v": 1, "op": "status", "args": {}}
    with pytest.raises(ValueError, match="over the limit"):
        header_length((MAX_CONTROL_MESSAGE + 1).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="not a map"):
        unpack(b"\x91\x01")


def test_ago() -> None:
    assert ago(None, 100.0) == "never"
    assert ago(99.5, 100.0) == "0.5s ago"
    assert ago(0.0, 7200.0) == "2h ago"


def test_status_table_lists_self_and_peers() -> None:
    status = {
        "self": {
            "id": "a" * 32,
            "name": "alpha",
            "role": "devops",
            "priority": 70,
            "address": "10.0.0.1",
            "ports": {"router": 7790},
            "mesh_id": "m" * 16,
        },
        "lead": None,
        "lead_reason": "no election yet",
        "peers": [
            {
                "id": "b" * 32,
                "name": "beta",
                "role": "observer",
                "state": "dead",
                "priority": 0,
                "address": "10.0.0.2",
                "last_seen": 90.0,
            }
        ],
        "counts": {"alive": 0, "suspect": 0, "dead": 1, "left": 0, "total": 2},
    }
    text = status_table(status, now=100.0)
    lines = text.splitlines()
    assert "2 nodes" in lines[0] and "1 dead" in lines[0] and "lead: none" in lines[0]
    assert lines[2].split()[:2] == ["NAME", "ID"]
    assert "alpha" in lines[3] and "alive (self)" in lines[3] and "10.0.0.1:7790" in lines[3]
    assert "beta" in lines[4] and "dead" in lines[4] and "10.0s ago" in lines[4]


# ---- meshctl health: degraded by quarantined state ----------------------------------------


def test_health_is_degraded_by_quarantined_records_only_with_a_lead() -> None:
    from meshd.cli.health import assess, degraded_reason, warnings

    lead = {"id": "a" * 32, "name": "n0", "term": 3}
    bad = [
        {"table": "meta", "key": "term", "reason": "term 9 out of range", "at": 1.0},
        {"table": "tasks", "key": "t" * 32, "reason": "undecodable", "at": 1.0},
        {"table": "meta", "key": "incarnation", "reason": "undecodable", "at": 1.0},
    ]
    clean = {"lead": lead, "counts": {"alive": 1}, "quarantine": []}
    assert assess(clean) == (True, None, 2)
    assert degraded_reason(clean) is None and warnings(clean) == []
    dirty = {**clean, "quarantine": bad}
    reason = degraded_reason(dirty)
    assert reason is not None
    assert reason.startswith("3 state records quarantined (meta/term: term 9 out of range, ")
    assert reason.endswith(", ...); see meshctl state quarantine list")
    assert warnings(dirty)[0] == "state record quarantined: meta/term: term 9 out of range"
    assert len(warnings(dirty)) == 3
    assert assess({**dirty, "lead": None, "lead_reason": "no lead: no quorum"})[0] is False
