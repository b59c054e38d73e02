from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from meshd.errors import StateLockedError
from meshd.store.db import StateLock, Store, StoredPeer
from meshd.wire.codec import member_record_to_wire
from meshd.wire.records import MemberInfo, MemberRecord, MemberState
from meshd.wire.schema import MAX_COUNTER


def record(n: int, state: MemberState = MemberState.ALIVE) -> MemberRecord:
    info = MemberInfo(
        node_id=f"{n:032x}",
        name=f"n{n}",
        role="devops",
        priority=70,
        ed25519_pk=bytes([n]) * 32,
        curve_pk=bytes([n + 1]) * 32,
        proof=bytes([n + 2]) * 32,
        addresses=("127.0.0.1",),
        router_port=7790,
        pub_port=7791,
        intro_port=7792,
        incarnation=n,
    )
    return MemberRecord(info, state)


def test_peers_survive_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    store.save_peers([StoredPeer(record(1), 123.5), StoredPeer(record(2, MemberState.DEAD), None)])
    store.close()
    again = Store(tmp_path, map_size=8 << 20)
    peers = {p.record.info.node_id: p for p in again.load_peers()}
    assert peers[f"{1:032x}"].record == record(1)
    assert peers[f"{1:032x}"].last_seen == 123.5
    assert peers[f"{2:032x}"].record.state is MemberState.DEAD
    again.delete_peer(f"{1:032x}")
    assert [p.record.info.name for p in again.load_peers()] == ["n2"]
    again.close()


def test_a_peer_record_from_before_signed_info_is_dropped_quietly(tmp_path: Path) -> None:
    # Written by an older version (member info without "sig"): re-learnt from the mesh,
    # neither loaded nor quarantined (it is no sign of damage).
    store = Store(tmp_path)
    store.save_peers([StoredPeer(record(1), None), StoredPeer(record(2), None)])
    old = record(2)
    wire = member_record_to_wire(old)
    del wire["m"]["sig"]
    with store.env.begin(db=store._peers, write=True) as txn:
        txn.put(old.info.node_id.encode(), msgpack.packb({"r": wire, "seen": None}))
    assert [p.record.info.name for p in store.load_peers()] == ["n1"]
    assert store.quarantined == []
    with store.env.begin(db=store._peers) as txn:
        assert txn.get(old.info.node_id.encode()) is None


def test_a_corrupt_peer_record_is_quarantined_not_destroyed(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    store.save_peers([StoredPeer(record(1), None)])
    with store.env.begin(db=store._peers, write=True) as txn:
        txn.put(b"garbage", b"\xc1\xc1")
    assert [p.record.info.name for p in store.load_peers()] == ["n1"]
    with store.env.begin(db=store._peers) as txn:
        assert txn.get(b"garbage") is None  # moved ...
    ((rec, raw),) = store.quarantine_raw()  # ... whole: nothing stored is destroyed
    assert (rec["table"], rec["key"], raw) == ("peers", "garbage", b"\xc1\xc1")
    assert [(q.table, q.key) for q in store.quarantined] == [("peers", "garbage")]
    assert [p.record.info.name for p in store.load_peers()] == ["n1"]  # once only
    assert len(store.quarantine_list()) == 1
    store.close()


def test_incarnation_grows_across_restarts(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    assert store.next_incarnation() == 1
    store.save_incarnation(7)  # a refutation bumped it while running
    store.save_incarnation(3)  # never goes down
    store.close()
    store = Store(tmp_path, map_size=8 << 20)
    assert store.next_incarnation() == 8
    store.set_meta("mesh_id", "abc")
    assert store.get_meta("mesh_id") == "abc"
    assert store.get_meta("missing") is None
    store.close()


def test_second_lock_on_a_state_dir_is_refused(tmp_path: Path) -> None:
    first = StateLock(tmp_path)
    first.acquire()
    second = StateLock(tmp_path)
    with pytest.raises(StateLockedError, match="already running"):
        second.acquire()
    first.release()
    second.acquire()  # free again once the first one is gone
    second.release()


def test_the_voter_set_is_durable_and_a_bad_one_is_quarantined(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    assert store.load_election().voters == (0, ())
    store.save_election(4, None, (2, ("a" * 32, "b" * 32)))
    store.close()
    store = Store(tmp_path, map_size=8 << 20)
    assert store.load_election().voters == (2, ("a" * 32, "b" * 32))
    with store.env.begin(db=store._meta, write=True) as txn:
        txn.put(b"voters", msgpack.packb([3, ["not a node id"]]))
    loaded = store.load_election()
    assert loaded.voters == (0, ()) and loaded[:3] == (4, None, True)
    assert [(q.table, q.key) for q in store.quarantined] == [("meta", "voters")]
    store.close()


def test_election_state_is_durable(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    assert store.load_election()[:3] == (0, None, True)
    store.save_election(3, "a" * 32)
    store.save_election(4, None)
    store.close()
    store = Store(tmp_path, map_size=8 << 20)
    assert store.load_election()[:3] == (4, None, True)
    assert store.quarantined == []
    store.close()


def test_audit_reads_back_in_time_order_and_filters(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    store.append_audit({"type": "LEAD_ELECTED", "term": 1, "reason": "won", "at": 100.0})
    store.append_audit({"type": "STEPPED_DOWN", "term": 1, "reason": "operator", "at": 101.5})
    store.append_audit({"type": "LEAD_ELECTED", "term": 2, "reason": "won", "at": 101.5})
    store.close()
    store = Store(tmp_path, map_size=8 << 20)
    assert [r["term"] for r in store.read_audit()] == [1, 1, 2]
    assert [r["type"] for r in store.read_audit(since=101.0)] == ["STEPPED_DOWN", "LEAD_ELECTED"]
    assert [r["term"] for r in store.read_audit(kind="LEAD_ELECTED")] == [1, 2]
    assert store.read_audit(since=500.0) == []
    store.close()


def test_tasks_outbox_and_audit_survive_reopen_and_bad_records_are_quarantined(
    tmp_path: Path,
) -> None:
    from meshd.tasks.model import new_task
    from meshd.wire.messages import ReportKind, TaskReport
    from meshd.wire.records import TaskCopy

    origin = f"{1:032x}"
    t1 = new_task("echo", {"message": "a"}, origin, 1000.0)
    t2 = new_task("sleep", {"seconds": 1.0}, origin, 1001.0)
    report = TaskReport(t2.task_id, 1, ReportKind.COMPLETED, result={"slept": 1.0})
    store = Store(tmp_path, map_size=8 << 20)
    store.write_batch(
        [TaskCopy(0, 0, t1), TaskCopy(3, 7, t2)],
        {f"submit:{t1.task_id}": True, f"report:{t2.task_id}": report},
        [{"type": "TASK_ASSIGNED", "at": 1002.0, "task_id": t2.task_id}],
    )
    store.write_batch([], {f"submit:{t1.task_id}": None}, [], durable=False)
    with store.env.begin(write=True) as txn:  # a record from a future version, or damage
        txn.put(b"f" * 32, b"\xc1garbage", db=store._tasks)
    store.sync()
    store.close()

    again = Store(tmp_path, map_size=8 << 20)
    copies, submits, reports = again.load_tasks()
    got = sorted(((c.term, c.seq, c.task) for c in copies), key=lambda x: x[0])
    assert got == [(0, 0, t1), (3, 7, t2)]
    assert submits == []
    assert reports == [report]
    assert again.bad_task_records == 1
    with again.env.begin(db=again._tasks) as txn:
        assert txn.get(b"f" * 32) is None  # moved to quarantine, never destroyed
    ((rec, raw),) = again.quarantine_raw()
    assert (rec["table"], rec["key"], raw) == ("tasks", "f" * 32, b"\xc1garbage")
    assert again.read_audit(kind="TASK_ASSIGNED")[0]["task_id"] == t2.task_id
    again.close()


# ---- bad durable state: quarantined, never fatal ----------------------------------------------


def _put_meta(store: Store, key: bytes, raw: bytes) -> None:
    with store.env.begin(db=store._meta, write=True) as txn:
        txn.put(key, raw)


def _reasons(store: Store) -> dict[tuple[str, str], str]:
    return {(q.table, q.key): q.reason for q in store.quarantined}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (msgpack.packb(2**63 - 1), "out of range"),
        (msgpack.packb(MAX_COUNTER), "out of range"),  # its next term would pass the bound
        (msgpack.packb(-1), "out of range"),
        (msgpack.packb("7"), "not an integer"),
        (msgpack.packb(True), "not an integer"),
        (b"\xc1", "undecodable"),
    ],
)
def test_a_bad_term_is_quarantined_with_its_vote_and_the_term_is_unknown(
    tmp_path: Path, raw: bytes, why: str
) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    store.save_election(5, "a" * 32)
    _put_meta(store, b"term", raw)
    assert store.load_election("b" * 32)[:3] == (0, None, False)
    reasons = _reasons(store)
    assert why in reasons[("meta", "term")]
    assert ("meta", "voted_for") in reasons
    raws = {rec["key"]: r for rec, r in store.quarantine_raw()}
    assert raws["term"] == raw and raws["voted_for"] == msgpack.packb("a" * 32)
    # Nothing bad left: the next start reads an empty (known) state until a term is saved.
    assert Store.load_election(store, "b" * 32)[:3] == (0, None, True)
    store.close()


def test_the_largest_usable_term_loads(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    store.save_election(MAX_COUNTER - 1, None)
    assert store.load_election()[:3] == (MAX_COUNTER - 1, None, True)
    assert store.quarantined == []
    store.close()


@pytest.mark.parametrize("raw", [msgpack.packb(12), msgpack.packb("x" * 32), b"\xc1"])
def test_a_bad_vote_under_a_good_term_reads_as_a_vote_for_ourselves(
    tmp_path: Path, raw: bytes
) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    store.save_election(5, None)
    _put_meta(store, b"voted_for", raw)
    assert store.load_election("b" * 32)[:3] == (5, "b" * 32, True)  # grants nobody else in 5
    assert list(_reasons(store)) == [("meta", "voted_for")]
    store.close()
    store = Store(tmp_path, map_size=8 << 20)
    _put_meta(store, b"voted_for", raw)
    assert store.load_election()[:3] == (0, None, False)  # no id to vote for: as a bad term
    store.close()


@pytest.mark.parametrize(
    "raw", [msgpack.packb(MAX_COUNTER), msgpack.packb(2**63 - 1), msgpack.packb(-3), b"\xc1"]
)
def test_a_bad_incarnation_is_quarantined_and_the_fallback_used(tmp_path: Path, raw: bytes) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    _put_meta(store, b"incarnation", raw)
    assert store.next_incarnation(fallback=1_700_000_000) == 1_700_000_000
    assert list(_reasons(store)) == [("meta", "incarnation")]
    assert store.next_incarnation(fallback=5) == 1_700_000_001  # counts on from there
    store.close()


def test_the_largest_usable_incarnation_bumps(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    _put_meta(store, b"incarnation", msgpack.packb(MAX_COUNTER - 2))
    assert store.next_incarnation(fallback=9) == MAX_COUNTER - 1
    assert store.next_incarnation(fallback=9) == MAX_COUNTER
    assert store.quarantined == []
    assert store.next_incarnation(fallback=9) == 9  # MAX_COUNTER has no next one
    store.close()


def test_bad_peer_records_are_quarantined(tmp_path: Path) -> None:
    from meshd.wire.codec import member_record_to_wire

    store = Store(tmp_path, map_size=8 << 20)
    store.save_peers([StoredPeer(record(1), None), StoredPeer(record(2), None)])
    wire = member_record_to_wire(record(3))
    wire_over = dict(wire)
    wire_over["m"] = {**wire["m"], "inc": MAX_COUNTER + 1}
    with store.env.begin(db=store._peers, write=True) as txn:
        txn.put(f"{3:032x}".encode(), msgpack.packb({"r": wire_over, "seen": None}))
        txn.put(f"{4:032x}".encode(), msgpack.packb({"r": wire, "seen": None}))  # wrong key
        txn.put(f"{2:032x}".encode(), msgpack.packb({"r": member_record_to_wire(record(2)),
                                                     "seen": "yesterday"}))  # fmt: skip
    assert [p.record.info.name for p in store.load_peers()] == ["n1"]
    assert sorted(k for _, k in _reasons(store)) == [f"{n:032x}" for n in (2, 3, 4)]
    assert "another id" in _reasons(store)[("peers", f"{4:032x}")]
    store.close()


def test_bad_task_copies_and_outbox_entries_are_quarantined(tmp_path: Path) -> None:
    from meshd.tasks.model import new_task
    from meshd.wire.codec import encode_task_copy
    from meshd.wire.records import TaskCopy

    origin = f"{1:032x}"
    t1 = new_task("echo", {"message": "a"}, origin, 1000.0)
    t2 = new_task("echo", {"message": "b"}, origin, 1000.0)
    t3 = new_task("echo", {"message": "c"}, origin, 1000.0)
    store = Store(tmp_path, map_size=8 << 20)
    store.write_batch([TaskCopy(1, 1, t1)], {f"report:{t1.task_id}": True}, [])
    good = encode_task_copy(TaskCopy(1, 2, t2))
    over = msgpack.unpackb(encode_task_copy(TaskCopy(1, 3, t3)))
    over[0] = 2**63 - 1  # the copy's term: past the wire's bound
    with store.env.begin(db=store._tasks, write=True) as txn:
        txn.put(t3.task_id.encode(), msgpack.packb(over))
        txn.put(b"0" * 32, good)  # t2's copy under another id
        txn.put(b"1" * 32, b"garbage")
    with store.env.begin(db=store._outbox, write=True) as txn:
        txn.put(b"report:" + t1.task_id.encode(), b"\xc1")
        txn.put(b"what:" + t1.task_id.encode(), b"")
    copies, submits, reports = store.load_tasks()
    assert [c.task for c in copies] == [t1] and submits == [] and reports == []
    assert store.bad_task_records == 5
    assert sorted(_reasons(store)) == sorted(
        [("tasks", t3.task_id), ("tasks", "0" * 32), ("tasks", "1" * 32),
         ("outbox", f"report:{t1.task_id}"), ("outbox", f"what:{t1.task_id}")]
    )  # fmt: skip
    assert store.load_tasks()[0] == copies and store.bad_task_records == 0
    assert len(store.quarantine_list()) == 5
    assert store.quarantine_clear() == 5
    assert store.quarantine_list() == [] and store.quarantined == []
    store.close()
