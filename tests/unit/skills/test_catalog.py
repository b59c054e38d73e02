"""The mesh catalog (meshd.skills.catalog): untrusted signers not kept, bounds per member
and in all, full inventories and deltas."""

from __future__ import annotations

import hashlib

from meshd.skills import catalog as cat
from meshd.skills.catalog import Catalog
from meshd.wire.records import PackInfo

GOOD = b"\x01" * 32
BAD = b"\x02" * 32


def trusted(key: bytes) -> bool:
    return key == GOOD


def pack(name: str, signer: bytes = GOOD, version: str = "1.0.0", pad: int = 0) -> PackInfo:
    pid = hashlib.sha256(name.encode()).hexdigest()
    return PackInfo(name, version, pid, 10, signer, {"p": "x" * pad})


def test_untrusted_signers_are_not_stored() -> None:
    c = Catalog(64, 4096, 1 << 24)
    flood = tuple(pack(f"n{i}", BAD) for i in range(1000))
    for _ in range(3):
        up = c.apply("m", flood, full=False, removed=(), trusted=trusted)
        assert up.kept == [] and len(up.refused) == 1000
        assert {r for _, r in up.refused} == {cat.UNTRUSTED}
    assert c.entries == 0 and c.bytes == 0 and c.nodes() == []


def test_per_member_bound() -> None:
    c = Catalog(3, 4096, 1 << 24)
    up = c.apply(
        "m", tuple(pack(f"n{i}") for i in range(5)), full=False, removed=(), trusted=trusted
    )
    assert [p.name for p in up.kept] == ["n0", "n1", "n2"]
    assert up.refused == [("n3", cat.MEMBER_LIMIT), ("n4", cat.MEMBER_LIMIT)]
    # replacing a pack it already has is not a new one; another member has its own room
    up = c.apply("m", (pack("n1", version="2"),), full=False, removed=(), trusted=trusted)
    assert up.kept and c.of("m")["n1"].version == "2"
    up = c.apply("o", (pack("x"),), full=False, removed=(), trusted=trusted)
    assert up.kept
    # a removal makes room again
    c.apply("m", (), full=False, removed=("n0",), trusted=trusted)
    assert c.apply("m", (pack("n3"),), full=False, removed=(), trusted=trusted).kept
    assert c.entries == 4


def test_total_bounds_in_entries_and_bytes() -> None:
    c = Catalog(100, 5, 1 << 24)
    for m in ("a", "b"):
        c.apply(
            m, tuple(pack(f"{m}{i}") for i in range(3)), full=False, removed=(), trusted=trusted
        )
    assert c.entries == 5
    up = c.apply("c", (pack("c0"),), full=False, removed=(), trusted=trusted)
    assert up.refused == [("c0", cat.CATALOG_FULL)]
    big = pack("big", pad=4000)
    c = Catalog(100, 100, cat.entry_bytes(big) + cat.entry_bytes(pack("s")))
    assert c.apply("a", (big,), full=False, removed=(), trusted=trusted).kept
    assert c.apply("b", (pack("s"),), full=False, removed=(), trusted=trusted).kept
    up = c.apply("b", (pack("t"),), full=False, removed=(), trusted=trusted)
    assert up.refused == [("t", cat.CATALOG_FULL)]
    assert c.bytes <= c.max_bytes


def test_full_inventory_replaces_and_forget_frees() -> None:
    c = Catalog(64, 4096, 1 << 24)
    c.apply("m", (pack("a"), pack("b")), full=True, removed=(), trusted=trusted)
    c.apply("m", (pack("c"),), full=True, removed=(), trusted=trusted)
    assert set(c.of("m")) == {"c"} and c.entries == 1
    assert c.announced("c") == [("m", pack("c"))]
    assert c.signer_of(pack("c").pack_id) == GOOD
    c.forget("m")
    assert c.entries == 0 and c.bytes == 0 and c.announced("c") == []
