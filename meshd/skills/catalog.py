"""The mesh catalog: which member announced which pack (SKILL_ANNOUNCE), bounded. Pure:
the caller says which signers it trusts.

Every member announces what it holds; a node keeps it so it can check a task's
parameters against a skill it does not hold, show ``skill list --mesh`` and know where to
fetch a pack. What a member may make a node keep is bounded (:class:`Catalog`): packs
whose signer the node does not trust are not kept at all (it would never install or run
them), at most ``max_per_member`` packs per member, at most ``max_entries`` packs in all,
and at most ``max_bytes`` of them (each pack counted as its msgpack-encoded manifest plus
:data:`ENTRY_OVERHEAD`). An announcement beyond a bound is refused pack by pack, counted,
and never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from meshd.wire.fields import packb
from meshd.wire.records import PackInfo

#: bytes counted per catalog entry besides its manifest (the record, its keys, the dicts).
ENTRY_OVERHEAD: Final = 512

#: Refusal reasons (counted per reason).
UNTRUSTED: Final = "announce_untrusted_signer"
MEMBER_LIMIT: Final = "announce_over_member_limit"
CATALOG_FULL: Final = "announce_catalog_full"


def entry_bytes(info: PackInfo) -> int:
    """What one entry counts against ``max_bytes``."""
    return len(packb(info.manifest)) + ENTRY_OVERHEAD


@dataclass(slots=True)
class Update:
    """What an announcement did: the packs now kept (new or changed), and the refused
    ones as ``(name, reason)``."""

    kept: list[PackInfo] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


class Catalog:
    """Packs the other members announced, by member and skill name (see the module
    docstring)."""

    def __init__(self, max_per_member: int, max_entries: int, max_bytes: int) -> None:
        self.max_per_member = max_per_member
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._by_node: dict[str, dict[str, PackInfo]] = {}
        self._cost: dict[tuple[str, str], int] = {}
        self.entries = 0
        self.bytes = 0

    def apply(
        self,
        sender: str,
        packs: tuple[PackInfo, ...],
        *,
        full: bool,
        removed: tuple[str, ...],
        trusted: Callable[[bytes], bool],
    ) -> Update:
        """Record one SKILL_ANNOUNCE of ``sender``: a full inventory replaces what it
        announced before; a delta adds or replaces ``packs`` and drops ``removed``."""
        if full:
            self.forget(sender)
        for name in removed:
            self._drop(sender, name)
        update = Update()
        for info in packs:
            reason = self._admit(sender, info, trusted)
            if reason is None:
                self._put(sender, info)
                update.kept.append(info)
            else:
                update.refused.append((info.name, reason))
        return update

    def forget(self, node: str) -> None:
        """Drop everything ``node`` announced (it left, died, or sent a full inventory)."""
        for name in list(self._by_node.get(node, ())):
            self._drop(node, name)

    def _admit(self, sender: str, info: PackInfo, trusted: Callable[[bytes], bool]) -> str | None:
        if not trusted(info.signer):
            return UNTRUSTED
        held = self._by_node.get(sender, {})
        old = self._cost.get((sender, info.name), 0)
        count = len(held) + (0 if info.name in held else 1)
        if count > self.max_per_member:
            return MEMBER_LIMIT
        if self.entries + (0 if old else 1) > self.max_entries:
            return CATALOG_FULL
        if self.bytes - old + entry_bytes(info) > self.max_bytes:
            return CATALOG_FULL
        return None

    def _put(self, sender: str, info: PackInfo) -> None:
        self._drop(sender, info.name)
        cost = entry_bytes(info)
        self._by_node.setdefault(sender, {})[info.name] = info
        self._cost[(sender, info.name)] = cost
        self.entries += 1
        self.bytes += cost

    def _drop(self, node: str, name: str) -> None:
        packs = self._by_node.get(node)
        if packs is None or packs.pop(name, None) is None:
            return
        self.entries -= 1
        self.bytes -= self._cost.pop((node, name))
        if not packs:
            del self._by_node[node]

    # ---- reading --------------------------------------------------------------------

    def items(self) -> Iterator[tuple[str, dict[str, PackInfo]]]:
        """(node id, its packs by name), for every member that announced any."""
        yield from self._by_node.items()

    def nodes(self) -> list[str]:
        return list(self._by_node)

    def of(self, node: str) -> dict[str, PackInfo]:
        """What ``node`` announced, by name (a copy)."""
        return dict(self._by_node.get(node, {}))

    def announced(self, name: str) -> list[tuple[str, PackInfo]]:
        """(node id, pack) of every member that announced skill ``name``."""
        return [(node, packs[name]) for node, packs in self._by_node.items() if name in packs]

    def signer_of(self, pack_id: str) -> bytes | None:
        """The signer some member announced for ``pack_id`` (as announced: unverified)."""
        for packs in self._by_node.values():
            for info in packs.values():
                if info.pack_id == pack_id:
                    return info.signer
        return None
