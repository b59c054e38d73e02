from __future__ import annotations

from pathlib import Path

import pytest

from meshd.errors import StateLockedError
from meshd.store.db import StateLock, Store, StoredPeer
from meshd.wire.records import MemberInfo, MemberRecord, MemberState


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


def test_a_corrupt_peer_record_is_skipped_and_kept(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    store.save_peers([StoredPeer(record(1), None)])
    with store.env.begin(db=store._peers, write=True) as txn:
        txn.put(b"garbage", b"\xc1\xc1")
    assert [p.record.info.name for p in store.load_peers()] == ["n1"]
    with store.env.begin(db=store._peers) as txn:
        assert txn.get(b"garbage") == b"\xc1\xc1"  # nothing stored is destroyed
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


def test_election_state_is_durable(tmp_path: Path) -> None:
    store = Store(tmp_path, map_size=8 << 20)
    assert store.load_election() == (0, None)
    store.save_election(3, "a" * 32)
    store.save_election(4, None)
    store.close()
    store = Store(tmp_path, map_size=8 << 20)
    assert store.load_election() == (4, None)
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


def test_tasks_outbox_and_audit_survive_reopen_and_bad_records_are_kept(tmp_path: Path) -> None:
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
        assert txn.get(b"f" * 32) == b"\xc1garbage"  # skipped, never destroyed
    assert again.read_audit(kind="TASK_ASSIGNED")[0]["task_id"] == t2.task_id
    again.close()
