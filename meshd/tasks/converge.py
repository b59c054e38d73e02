"""How two nodes find the task copies on which they differ: a 256-bucket digest. Pure.

Every node holds a copy of every task; the newest ``(term, seq)`` wins everywhere. The
lead's updates normally keep every copy current, but a node that was cut off, paused or
restarted may miss some, and a partitioned lead may have written copies the others never
saw. "Ask for what is newer than my newest" cannot repair that (a missed copy may be
older than the newest one held), so nodes compare digests instead:

* every copy a lead stamped (``term > 0``; an origin's own ``(0, 0)`` copy is private to
  it) hashes to 63 bits (:func:`copy_hash` of task id, term and seq);
* the copies are split into 256 buckets by the first byte of the task id, and a bucket's
  value is the XOR of its copies' hashes: changing one copy is O(1) (XOR the old hash out
  and the new one in), and two nodes holding the same copies have the same buckets;
* the root is BLAKE2b-128 of the 256 values.

Two nodes whose roots differ exchange buckets; the one asked answers with the keys
(task id, term, seq) of its copies in the buckets that differ (TASK_KEYS); the asker
fetches the copies that are newer on the other side and sends the ones that are newer
(or only) on its own, and each keeps the newer copy of every task. Afterwards both hold,
for every task either held, the newest copy either held: the repair is complete,
whatever was missed and whatever its age, and costs the keys of the differing buckets
plus the copies that really differ. (Equal buckets with different contents would need a 63-bit hash
collision of XOR sums; the periodic root comparison would then not notice that one bucket.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

from meshd.wire.messages import DIGEST_BUCKETS
from meshd.wire.records import TaskCopy

_MASK: Final = (1 << 63) - 1


def copy_hash(task_id: str, term: int, seq: int) -> int:
    """The 63-bit hash of one copy's identity: its task id and the lead stamp."""
    digest = hashlib.blake2b(f"{task_id}:{term}:{seq}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK


def bucket_of(task_id: str) -> int:
    """The bucket of a task: the first byte of its (hex) id."""
    return int(task_id[:2], 16) % DIGEST_BUCKETS


class Digest:
    """The bucket summary of the lead-stamped copies a node holds (see the module
    docstring), kept up to date as copies are replaced."""

    __slots__ = ("_root", "buckets")

    def __init__(self) -> None:
        self.buckets = [0] * DIGEST_BUCKETS
        self._root: bytes | None = None

    def replace(self, old: TaskCopy | None, new: TaskCopy | None) -> None:
        """``old`` (if any) is no longer held; ``new`` (if any) is."""
        for copy in (old, new):
            if copy is not None and copy.term > 0:
                task_id = copy.task.task_id
                self.buckets[bucket_of(task_id)] ^= copy_hash(task_id, copy.term, copy.seq)
                self._root = None

    def root(self) -> bytes:
        if self._root is None:
            data = b"".join(b.to_bytes(8, "big") for b in self.buckets)
            self._root = hashlib.blake2b(data, digest_size=16).digest()
        return self._root

    def differing(self, other: Sequence[int]) -> set[int]:
        """The buckets whose values differ from ``other`` (all of them when ``other`` is
        not a full set of buckets)."""
        if len(other) != DIGEST_BUCKETS:
            return set(range(DIGEST_BUCKETS))
        return {i for i, (a, b) in enumerate(zip(self.buckets, other, strict=True)) if a != b}


def copies_in(copies: Iterable[TaskCopy], buckets: set[int]) -> list[TaskCopy]:
    """The lead-stamped copies in ``buckets``, oldest first (a receiver applies them in
    the order they were written)."""
    picked = [c for c in copies if c.term > 0 and bucket_of(c.task.task_id) in buckets]
    picked.sort(key=lambda c: (c.term, c.seq))
    return picked
