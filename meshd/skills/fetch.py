"""Fetching one pack from a holder, chunk by chunk (SKILL_FETCH / SKILL_CHUNK), checked as
it arrives. Pure: :class:`Download` says what to ask for next and judges each answer; the
caller writes the accepted bytes wherever it keeps them (a file: memory does not grow with
the pack) and sends the requests.

A chunk is refused when the holder reports an error, when it is not the answer to the
request (pack id, offset), when it does not announce the size the pack was announced with,
when it is empty before the end, or when its bytes would go past the announced size. Once
the announced size has arrived, the SHA-256 of everything accepted must be the pack id.
"""

from __future__ import annotations

import hashlib
from typing import Final

from meshd.errors import MeshError
from meshd.wire.messages import SkillChunk, SkillFetch
from meshd.wire.records import PackInfo

#: bytes per SKILL_CHUNK asked for (a frame is at most 1 MiB).
CHUNK_BYTES: Final = 256 * 1024


class FetchRefused(MeshError):
    """A fetch cannot go on: ``code`` is ``too_large`` (the announced size, or a chunk past
    it), ``fetch_failed`` (the holder's error or a chunk that does not answer the request)
    or ``hash_mismatch`` (the bytes are not the pack)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class Download:
    """The state of fetching ``info`` from one holder (see the module docstring)."""

    def __init__(self, info: PackInfo, max_bytes: int) -> None:
        if info.size > max_bytes:
            raise FetchRefused(
                f"pack {info.name} is announced as {info.size} bytes, over {max_bytes}",
                "too_large",
            )
        if info.size == 0:
            raise FetchRefused(f"pack {info.name} is announced as empty", "fetch_failed")
        self.info = info
        self.received = 0
        self._sha = hashlib.sha256()

    @property
    def done(self) -> bool:
        """Whether every announced byte has arrived."""
        return self.received >= self.info.size

    def request(self) -> SkillFetch:
        """The next SKILL_FETCH: the bytes from where the accepted ones end."""
        want = min(CHUNK_BYTES, self.info.size - self.received)
        return SkillFetch(self.info.pack_id, self.received, want)

    def accept(self, chunk: SkillChunk) -> bytes:
        """The bytes of ``chunk`` to append, once checked; raises :class:`FetchRefused`."""
        info = self.info
        if chunk.error:
            raise FetchRefused(f"the holder says: {chunk.error}", "fetch_failed")
        if chunk.pack_id != info.pack_id or chunk.offset != self.received:
            raise FetchRefused(
                f"a chunk of {chunk.pack_id[:12]} at {chunk.offset} answered a request for "
                f"{info.pack_id[:12]} at {self.received}",
                "fetch_failed",
            )
        if chunk.total != info.size:
            raise FetchRefused(
                f"the holder gives the pack as {chunk.total} bytes, announced {info.size}",
                "too_large" if chunk.total > info.size else "fetch_failed",
            )
        if self.received + len(chunk.data) > info.size:
            raise FetchRefused(
                f"a chunk of {len(chunk.data)} bytes at {chunk.offset} goes past the "
                f"announced {info.size} bytes",
                "too_large",
            )
        if not chunk.data:
            raise FetchRefused(f"an empty chunk at {chunk.offset} of {info.size}", "fetch_failed")
        self._sha.update(chunk.data)
        self.received += len(chunk.data)
        return chunk.data

    def finish(self) -> None:
        """Check the whole: every byte in, and its SHA-256 is the pack id."""
        if not self.done:
            raise FetchRefused(f"{self.received} of {self.info.size} bytes arrived", "fetch_failed")
        if self._sha.hexdigest() != self.info.pack_id:
            raise FetchRefused("the data does not match the pack id", "hash_mismatch")
