"""Framing of the local control socket (meshctl / meshd.client <-> meshd).

An AF_UNIX stream socket in the state dir, mode 0600 (owner only). Each message is a
4-byte big-endian length followed by a msgpack map. Request: ``{"v": 1, "op": str,
"args": map}``. Reply: ``{"ok": true, "result": any}`` or ``{"ok": false, "error":
{"code": str, "message": str}}``. Kept import-light: meshctl must start fast.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

CONTROL_VERSION = 1
SOCKET_NAME = "control.sock"
#: Largest control message (bytes): a status of a few hundred peers fits easily.
MAX_CONTROL_MESSAGE = 16 * 1024 * 1024
_LEN = struct.Struct(">I")


def pack(obj: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def header_length(header: bytes) -> int:
    (length,) = _LEN.unpack(header)
    if length > MAX_CONTROL_MESSAGE:
        raise ValueError(f"control message of {length} bytes is over the limit")
    return int(length)


def unpack(body: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(body, raw=False)
    if not isinstance(obj, dict):
        raise ValueError("control message is not a map")
    return obj
