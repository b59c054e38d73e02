"""The local LMDB store: the node's source of truth.

Tables (LMDB named databases):

* ``meta``  - small node facts: mesh id, incarnation counter, created-at.
* ``peers`` - last known record of every member (msgpack of the wire MemberRecord plus
  ``last_seen`` wall time), so a restarted node rejoins fast without waiting for mDNS.
* ``meta`` also holds the election's durable state: ``term`` and ``voted_for``, written
  (fsync'd) before any vote or acknowledgement that depends on them leaves the node.
* ``tasks`` - this node's copy of every task (the newest :class:`TaskCopy` it holds).
* ``outbox`` - reliable task messages not yet acknowledged (``submit:<id>``,
  ``report:<id>``), resent after a restart.
* ``audit`` - the permanent trail of coordination decisions (lead elected, lost, stepped
  down, ...), keyed by time so it reads back in order.
* ``quarantine`` - records the loaders found bad (undecodable, a counter out of range, a
  task copy the wire schema refuses), moved there whole - raw bytes, table, key, reason,
  time - instead of being used or deleted, until an operator clears them.

Every loader run at start (:meth:`Store.next_incarnation`, :meth:`Store.load_election`,
:meth:`Store.load_peers`, :meth:`Store.load_tasks`) checks every record it reads, moves a
bad one to ``quarantine`` and goes on with a safe value (see each method), so a node never
refuses to start over its own durable state; what it moved this run is in
:attr:`Store.quarantined` (the daemon audits it: ``STATE_QUARANTINED``).

A process lock (``meshd.lock`` with ``flock``) makes a second daemon on the same state
dir refuse with a clear message; LMDB alone would happily let two writers share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import msgpack

from meshd.errors import StateLockedError, StoreError
from meshd.wire.codec import (
    decode_payload,
    decode_task_copy,
    encode_payload,
    encode_task_copy,
    member_record_from_wire,
    member_record_to_wire,
)
from meshd.wire.messages import MsgType, TaskReport
from meshd.wire.records import MemberRecord, TaskCopy
from meshd.wire.schema import MAX_COUNTER

LOCK_FILE = "meshd.lock"
DB_DIR = "db"


class StateLock:
    """An exclusive lock on a state dir, held for the daemon's lifetime."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.read(fd, 32).decode().strip() or "?"
            finally:
                os.close(fd)
            raise StateLockedError(
                f"another meshd (pid {pid}) is already running on state dir {self.path.parent}; "
                "stop it first, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class StoredPeer:
    record: MemberRecord
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A record a loader moved to the ``quarantine`` table: where it was, why, when
    (wall seconds)."""

    table: str
    key: str
    reason: str
    at: float


class StoredElection(NamedTuple):
    """The election's durable state as read back. ``term_known`` is False when the term
    record itself was bad (quarantined): ``term`` is then 0 and the node must not vote
    until it has learnt the mesh's current term (see :class:`meshd.election.Election`)."""

    term: int
    voted_for: str | None
    term_known: bool = True
    #: The voter set (version, node ids); (0, ()) when none was decided or its record
    #: was bad (quarantined: the node then counts the member view until the lead sends
    #: the set again).
    voters: tuple[int, tuple[str, ...]] = (0, ())


def counter_problem(value: object, what: str) -> str | None:
    """Why ``value`` is not a usable stored counter (an int in 0..MAX_COUNTER whose next
    value, ``value + 1``, is one too), or None when it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{what} is not an integer: {value!r:.40}"
    if value < 0 or value + 1 > MAX_COUNTER:
        return f"{what} {value} out of range (0..{MAX_COUNTER - 1})"
    return None


def node_id_problem(value: object, what: str) -> str | None:
    """Why ``value`` is not a node id (32 lowercase hex digits), or None."""
    if not isinstance(value, str) or len(value) != 32:
        return f"{what} is not a node id: {value!r:.40}"
    if any(c not in "0123456789abcdef" for c in value):
        return f"{what} is not a node id: {value!r:.40}"
    return None


def _unpack(raw: bytes) -> tuple[object, str | None]:
    """(value, None), or (None, why) when ``raw`` is not one msgpack value."""
    try:
        return msgpack.unpackb(raw, raw=False), None
    except Exception as exc:
        return None, f"undecodable: {type(exc).__name__}"


class Store:
    """Typed access to the node's LMDB tables. Every write is one durable transaction."""

    def __init__(self, state_dir: Path, map_size: int = 1 << 30, fsync: bool = True) -> None:
        path = state_dir / DB_DIR
        path.mkdir(mode=0o700, exist_ok=True)
        try:
            self.env = lmdb.open(str(path), map_size=map_size, max_dbs=16, subdir=True, sync=False)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store in {path}: {exc}") from exc
        self._meta = self.env.open_db(b"meta")
        self._peers = self.env.open_db(b"peers")
        self._audit = self.env.open_db(b"audit")
        self._tasks = self.env.open_db(b"tasks")
        self._outbox = self.env.open_db(b"outbox")
        self._quarantine = self.env.open_db(b"quarantine")
        self._tables = {"meta": self._meta, "peers": self._peers, "tasks": self._tasks,
                        "outbox": self._outbox}  # fmt: skip
        #: Records the loaders of this process moved to quarantine, in order.
        self.quarantined: list[Quarantined] = []
        self._quarantine_seq = 0
        # Small keyed tables (skill packs, trust, revocations, statistics): see kv_*.
        self._kv = {
            name: self.env.open_db(name.encode())
            for name in (
                "packs",
                "trust",
                "revocations",
                "revoked_keys",  # of older versions: migrated, then emptied
                "revoked_packs",  # same
                "skill_stats",
            )
        }
        self._audit_seq = 0
        self.fsync = fsync
        self.syncs = 0

    def close(self) -> None:
        if self.fsync:
            self.env.sync(True)
        self.env.close()

    def sync(self) -> None:
        """fsync what earlier transactions committed (safe from a worker thread)."""
        if self.fsync:
            self.env.sync(True)
            self.syncs += 1

    @contextlib.contextmanager
    def _write(self, db: Any, sync: bool = True) -> Iterator[Any]:
        """A write transaction; committed, then fsync'd when ``sync`` and the store is
        configured to (the environment itself never syncs on its own: a batch of replica
        copies needs no fsync, a vote or an acknowledged task does)."""
        with self.env.begin(db=db, write=True) as txn:
            yield txn
        if sync and self.fsync:
            self.env.sync(True)
            self.syncs += 1

    # -- meta --------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(key.encode())
        return None if raw is None else msgpack.unpackb(raw, raw=False)

    def set_meta(self, key: str, value: Any) -> None:
        with self._write(self._meta) as txn:
            txn.put(key.encode(), msgpack.packb(value, use_bin_type=True))

    def next_incarnation(self, fallback: int = 1) -> int:
        """Bump and return the node's incarnation: each start outranks the last one.

        A stored value that does not decode, or whose bump would pass MAX_COUNTER, is
        quarantined and ``fallback`` used instead (the daemon passes the wall clock in
        seconds: far above any count of restarts and refutations, so the members that
        remember this node's last incarnation take the new one as newer)."""
        with self._write(None) as txn:
            raw = txn.get(b"incarnation", db=self._meta)
            value = 1
            if raw is not None:
                old, why = _unpack(bytes(raw))
                why = why or counter_problem(old, "incarnation")
                if why is None:
                    assert isinstance(old, int)
                    value = old + 1
                else:
                    self._move_to_quarantine(txn, "meta", b"incarnation", bytes(raw), why)
                    value = max(1, min(fallback, MAX_COUNTER - 1))
            txn.put(b"incarnation", msgpack.packb(value), db=self._meta)
        return value

    def save_incarnation(self, value: int) -> None:
        """Remember a refutation bump so a restart starts above it."""
        with self._write(self._meta) as txn:
            raw = txn.get(b"incarnation")
            if raw is None or msgpack.unpackb(raw) < value:
                txn.put(b"incarnation", msgpack.packb(value))

    # -- election ----------------------------------------------------------------
    def load_election(self, self_id: str | None = None) -> StoredElection:
        """The durable term, vote and voter set. A bad ``term`` record (undecodable, or a term whose
        next one would pass MAX_COUNTER) is quarantined with the vote that belongs to it:
        term 0, ``term_known`` False (the node may have voted in any term up to the lost
        one, so it votes in none until it has learnt the mesh's term). A bad ``voted_for``
        under a good term is quarantined and read as a vote for ``self_id``: the node
        grants nobody else a vote in that term, which is all a vote binds it to (without
        ``self_id``: as a bad term)."""
        with self._write(None) as txn:
            voters = self._load_voters(txn)
            raw_term = txn.get(b"term", db=self._meta)
            raw_vote = txn.get(b"voted_for", db=self._meta)
            term, why = (0, None) if raw_term is None else _unpack(bytes(raw_term))
            why = why or counter_problem(term, "term")
            if raw_term is not None and why is not None:
                self._move_to_quarantine(txn, "meta", b"term", bytes(raw_term), why)
                if raw_vote is not None:
                    reason = "the vote of a quarantined term"
                    self._move_to_quarantine(txn, "meta", b"voted_for", bytes(raw_vote), reason)
                return StoredElection(0, None, term_known=False, voters=voters)
            assert isinstance(term, int)
            voted, why = (None, None) if raw_vote is None else _unpack(bytes(raw_vote))
            if voted is not None or why is not None:
                why = why or node_id_problem(voted, "voted_for")
            if why is not None:
                assert raw_vote is not None
                self._move_to_quarantine(txn, "meta", b"voted_for", bytes(raw_vote), why)
                if self_id is None:
                    return StoredElection(0, None, term_known=False, voters=voters)
                return StoredElection(term, self_id, voters=voters)
        assert voted is None or isinstance(voted, str)
        return StoredElection(term, voted, voters=voters)

    def save_election(
        self, term: int, voted_for: str | None, voters: tuple[int, tuple[str, ...]] = (0, ())
    ) -> None:
        """One durable transaction: the caller sends its vote only after this returns."""
        with self._write(self._meta) as txn:
            txn.put(b"term", msgpack.packb(term))
            txn.put(b"voted_for", msgpack.packb(voted_for))
            txn.put(b"voters", msgpack.packb([voters[0], list(voters[1])]))

    def _load_voters(self, txn: Any) -> tuple[int, tuple[str, ...]]:
        """The stored voter set; a bad record is quarantined and read as none."""
        raw = txn.get(b"voters", db=self._meta)
        if raw is None:
            return (0, ())
        value, why = _unpack(bytes(raw))
        if why is None:
            if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
                why = f"voters is not [version, ids]: {value!r:.40}"
            else:
                why = counter_problem(value[0], "voters version")
                for nid in value[1]:
                    why = why or node_id_problem(nid, "voter")
        if why is not None or not isinstance(value, list):
            self._move_to_quarantine(txn, "meta", b"voters", bytes(raw), why or "not a list")
            return (0, ())
        return (int(value[0]), tuple(str(n) for n in value[1]))

    # -- audit -------------------------------------------------------------------
    def append_audit(self, record: dict[str, Any]) -> None:
        """Append one decision record; ``record["at"]`` (wall seconds) orders the log."""
        key = self._audit_key(record)
        with self._write(self._audit) as txn:
            txn.put(key, msgpack.packb(record, use_bin_type=True))

    def read_audit(self, since: float = 0.0, kind: str | None = None) -> list[dict[str, Any]]:
        start = int(since * 1e6).to_bytes(8, "big")
        out: list[dict[str, Any]] = []
        with self.env.begin(db=self._audit) as txn:
            cur = txn.cursor()
            if not cur.set_range(start):
                return out
            for _key, raw in cur:
                rec = msgpack.unpackb(raw, raw=False)
                if kind is None or rec.get("type") == kind:
                    out.append(rec)
        return out

    # -- tasks -------------------------------------------------------------------
    def write_batch(
        self,
        copies: list[TaskCopy],
        outbox: dict[str, TaskReport | bool | None],
        audit: list[dict[str, Any]],
        durable: bool = True,
    ) -> None:
        """One transaction (``durable``: fsync'd before returning): task copies, outbox
        changes (a report, True for a pending submit, None to delete) and audit records.
        The node sends nothing that depends on them before this returns (group commit:
        one fsync per batch)."""
        with self._write(None, sync=durable) as txn:
            for copy in copies:
                txn.put(
                    copy.task.task_id.encode(), encode_task_copy(copy, check=False), db=self._tasks
                )
            for key, value in outbox.items():
                if value is None or value is False:
                    txn.delete(key.encode(), db=self._outbox)
                elif value is True:
                    txn.put(key.encode(), b"\x01", db=self._outbox)
                else:
                    txn.put(key.encode(), _pack_report(value), db=self._outbox)
            for record in audit:
                txn.put(self._audit_key(record), msgpack.packb(record, use_bin_type=True),
                        db=self._audit)  # fmt: skip

    def load_tasks(self) -> tuple[list[TaskCopy], list[str], list[TaskReport]]:
        """Every stored copy, pending submit ids and pending reports. A copy the wire
        schema refuses (undecodable, a counter out of range, ...) or stored under another
        task's id, and an outbox entry that does not decode, is moved to quarantine
        (counted in ``bad_task_records``); the node goes on without it (a copy is
        re-learnt from the mesh, an unsent report is lost here)."""
        copies: list[TaskCopy] = []
        submits: list[str] = []
        reports: list[TaskReport] = []
        self.bad_task_records = 0
        bad: list[tuple[str, bytes, bytes, str]] = []
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self._tasks):
                try:
                    copy = decode_task_copy(bytes(raw))
                except Exception as exc:
                    bad.append(("tasks", bytes(key), bytes(raw), _decode_reason(exc)))
                    continue
                if copy.task.task_id.encode() != bytes(key):
                    bad.append(("tasks", bytes(key), bytes(raw), "stored under another id"))
                    continue
                copies.append(copy)
            for key, raw in txn.cursor(db=self._outbox):
                name = bytes(key).decode(errors="replace")
                kind, _, task_id = name.partition(":")
                try:
                    if kind == "submit":
                        submits.append(task_id)
                    elif kind == "report":
                        reports.append(_unpack_report(bytes(raw)))
                    else:
                        raise ValueError(f"unknown outbox entry kind {kind!r:.20}")
                except Exception as exc:
                    bad.append(("outbox", bytes(key), bytes(raw), _decode_reason(exc)))
        self._quarantine_all(bad)
        self.bad_task_records = len(bad)
        return copies, submits, reports

    def _audit_key(self, record: dict[str, Any]) -> bytes:
        self._audit_seq = (self._audit_seq + 1) % 65536
        return int(float(record["at"]) * 1e6).to_bytes(8, "big") + self._audit_seq.to_bytes(
            2, "big"
        )

    # -- small keyed tables ------------------------------------------------------
    def kv_put(self, table: str, key: str, value: Any, durable: bool = True) -> None:
        """Store ``value`` (msgpack) under ``key`` in ``table``; fsync'd when ``durable``."""
        with self._write(self._kv[table], sync=durable) as txn:
            txn.put(key.encode(), msgpack.packb(value, use_bin_type=True))

    def kv_delete(self, table: str, key: str) -> bool:
        with self._write(self._kv[table]) as txn:
            return bool(txn.delete(key.encode()))

    def kv_get(self, table: str, key: str) -> Any:
        with self.env.begin(db=self._kv[table]) as txn:
            raw = txn.get(key.encode())
        return None if raw is None else msgpack.unpackb(raw, raw=False)

    def kv_items(self, table: str) -> list[tuple[str, Any]]:
        """Every (key, value) of ``table``; an undecodable value is skipped (kept)."""
        out: list[tuple[str, Any]] = []
        with self.env.begin(db=self._kv[table]) as txn:
            for key, raw in txn.cursor():
                try:
                    out.append((bytes(key).decode(), msgpack.unpackb(raw, raw=False)))
                except Exception:
                    continue
        return out

    # -- peers -------------------------------------------------------------------
    def save_peers(self, peers: list[StoredPeer]) -> None:
        """Remember these member records (committed, not fsync'd: they only speed up a
        rejoin after a restart, and the next fsync of the store covers them; an fsync per
        membership change stalled the event loop of a busy host)."""
        if not peers:
            return
        with self._write(self._peers, sync=False) as txn:
            for peer in peers:
                value = {"r": member_record_to_wire(peer.record), "seen": peer.last_seen}
                txn.put(peer.record.info.node_id.encode(), msgpack.packb(value, use_bin_type=True))

    def delete_peer(self, node_id: str) -> None:
        with self._write(self._peers, sync=False) as txn:
            txn.delete(node_id.encode())

    def load_peers(self) -> list[StoredPeer]:
        """Every stored member record. One the wire schema refuses (undecodable, an
        incarnation out of range, ...) or stored under another node id is moved to
        quarantine; the member is re-learnt from the mesh. A record written before member
        info was signed (no ``sig``) is dropped quietly: it is re-learnt the same way, and
        it is no sign of damage."""
        out: list[StoredPeer] = []
        bad: list[tuple[str, bytes, bytes, str]] = []
        unsigned: list[bytes] = []
        with self.env.begin(db=self._peers) as txn:
            for key, raw in txn.cursor():
                try:
                    obj = msgpack.unpackb(raw, raw=False)
                    if _unsigned_peer(obj):
                        unsigned.append(bytes(key))
                        continue
                    record = member_record_from_wire(obj["r"])
                    seen = obj.get("seen")
                    if seen is not None and not isinstance(seen, (int, float)):
                        raise ValueError(f"last_seen is not a time: {seen!r:.40}")
                    if isinstance(seen, bool):
                        raise ValueError("last_seen is not a time")
                except Exception as exc:
                    bad.append(("peers", bytes(key), bytes(raw), _decode_reason(exc)))
                    continue
                if record.info.node_id.encode() != bytes(key):
                    bad.append(("peers", bytes(key), bytes(raw), "stored under another id"))
                    continue
                out.append(StoredPeer(record, None if seen is None else float(seen)))
        self._quarantine_all(bad)
        if unsigned:
            with self._write(self._peers, sync=False) as txn:
                for key in unsigned:
                    txn.delete(key)
        return out

    # -- quarantine --------------------------------------------------------------
    def _move_to_quarantine(self, txn: Any, table: str, key: bytes, raw: bytes, why: str) -> None:
        """Within ``txn``: keep ``raw`` in quarantine, delete it from ``table``."""
        at = time.time()
        self._quarantine_seq = (self._quarantine_seq + 1) % 65536
        qkey = int(at * 1e6).to_bytes(8, "big") + self._quarantine_seq.to_bytes(2, "big")
        name = key.decode(errors="replace")
        value = {"table": table, "key": name, "reason": why, "at": at, "raw": raw}
        txn.put(qkey, msgpack.packb(value, use_bin_type=True), db=self._quarantine)
        txn.delete(key, db=self._tables[table])
        self.quarantined.append(Quarantined(table, name, why, at))

    def _quarantine_all(self, bad: list[tuple[str, bytes, bytes, str]]) -> None:
        if bad:
            with self._write(None) as txn:
                for table, key, raw, why in bad:
                    self._move_to_quarantine(txn, table, key, raw, why)

    def quarantine_list(self) -> list[dict[str, Any]]:
        """Every quarantined record, oldest first: ``{"table", "key", "reason", "at",
        "size"}`` (``size``: bytes of the raw record, which stays in the table)."""
        out: list[dict[str, Any]] = []
        with self.env.begin(db=self._quarantine) as txn:
            for _key, raw in txn.cursor():
                try:
                    rec = msgpack.unpackb(raw, raw=False)
                    out.append(
                        {
                            "table": str(rec["table"]),
                            "key": str(rec["key"]),
                            "reason": str(rec["reason"]),
                            "at": float(rec["at"]),
                            "size": len(rec["raw"]),
                        }
                    )
                except Exception:
                    out.append({"table": "?", "key": "?", "reason": "unreadable", "at": 0.0,
                                "size": len(raw)})  # fmt: skip
        return out

    def quarantine_raw(self) -> list[tuple[dict[str, Any], bytes]]:
        """Every quarantined record with its raw bytes (for inspection and tests)."""
        out: list[tuple[dict[str, Any], bytes]] = []
        with self.env.begin(db=self._quarantine) as txn:
            for _key, raw in txn.cursor():
                rec = msgpack.unpackb(raw, raw=False)
                out.append(({k: v for k, v in rec.items() if k != "raw"}, bytes(rec["raw"])))
        return out

    def quarantine_clear(self) -> int:
        """Delete every quarantined record (an operator looked at them); returns how many."""
        with self._write(self._quarantine) as txn:
            n = int(txn.stat(self._quarantine)["entries"])
            txn.drop(self._quarantine, delete=False)
        self.quarantined.clear()
        return n


def _decode_reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def _unsigned_peer(obj: Any) -> bool:
    """A stored member record from before member info carried a signature."""
    if not isinstance(obj, dict):
        return False
    record = obj.get("r")
    info = record.get("m") if isinstance(record, dict) else None
    return isinstance(info, dict) and "sig" not in info


def _pack_report(report: TaskReport) -> bytes:
    """A pending report as its TASK_REPORT wire body (the codec's checks and form)."""
    _, body = encode_payload(report)
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack_report(raw: bytes) -> TaskReport:
    report = decode_payload(MsgType.TASK_REPORT, msgpack.unpackb(raw, raw=False))
    assert isinstance(report, TaskReport)
    return report
