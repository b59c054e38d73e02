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

A process lock (``meshd.lock`` with ``flock``) makes a second daemon on the same state
dir refuse with a clear message; LMDB alone would happily let two writers share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def next_incarnation(self) -> int:
        """Bump and return the node's incarnation: each start outranks the last one."""
        with self._write(self._meta) as txn:
            raw = txn.get(b"incarnation")
            value = (msgpack.unpackb(raw) if raw else 0) + 1
            txn.put(b"incarnation", msgpack.packb(value))
        return int(value)

    def save_incarnation(self, value: int) -> None:
        """Remember a refutation bump so a restart starts above it."""
        with self._write(self._meta) as txn:
            raw = txn.get(b"incarnation")
            if raw is None or msgpack.unpackb(raw) < value:
                txn.put(b"incarnation", msgpack.packb(value))

    # -- election ----------------------------------------------------------------
    def load_election(self) -> tuple[int, str | None]:
        with self.env.begin(db=self._meta) as txn:
            term = txn.get(b"term")
            voted = txn.get(b"voted_for")
        return (
            int(msgpack.unpackb(term)) if term else 0,
            msgpack.unpackb(voted, raw=False) if voted else None,
        )

    def save_election(self, term: int, voted_for: str | None) -> None:
        """One durable transaction: the caller sends its vote only after this returns."""
        with self._write(self._meta) as txn:
            txn.put(b"term", msgpack.packb(term))
            txn.put(b"voted_for", msgpack.packb(voted_for))

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
        """Every stored copy, pending submit ids and pending reports. A record that does
        not decode is skipped and kept on disk (counted in ``bad_task_records``)."""
        copies: list[TaskCopy] = []
        submits: list[str] = []
        reports: list[TaskReport] = []
        self.bad_task_records = 0
        with self.env.begin() as txn:
            for raw in txn.cursor(db=self._tasks).iternext(keys=False, values=True):
                try:
                    copies.append(decode_task_copy(bytes(raw)))
                except Exception:
                    self.bad_task_records += 1
            for key, raw in txn.cursor(db=self._outbox):
                name = bytes(key).decode(errors="replace")
                kind, _, task_id = name.partition(":")
                try:
                    if kind == "submit":
                        submits.append(task_id)
                    elif kind == "report":
                        reports.append(_unpack_report(bytes(raw)))
                except Exception:
                    self.bad_task_records += 1
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
        out: list[StoredPeer] = []
        with self.env.begin(db=self._peers) as txn:
            for raw in txn.cursor().iternext(keys=False, values=True):
                try:
                    obj = msgpack.unpackb(raw, raw=False)
                    out.append(StoredPeer(member_record_from_wire(obj["r"]), obj.get("seen")))
                except Exception:
                    # Skip it but keep it on disk: nothing stored is ever destroyed by a reader.
                    continue
        return out


def _pack_report(report: TaskReport) -> bytes:
    """A pending report as its TASK_REPORT wire body (the codec's checks and form)."""
    _, body = encode_payload(report)
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack_report(raw: bytes) -> TaskReport:
    report = decode_payload(MsgType.TASK_REPORT, msgpack.unpackb(raw, raw=False))
    assert isinstance(report, TaskReport)
    return report
