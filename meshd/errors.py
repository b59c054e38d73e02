"""One error hierarchy for the whole package.

``MeshError`` is the root. Protocol errors are split the way h11 splits them:
``LocalProtocolError`` means *we* were asked to do something the protocol forbids
(a bug or bad input on this side); ``RemoteProtocolError`` means a peer sent us
something invalid. Third-party errors (zmq, lmdb, nacl) are mapped onto these at
the edges so callers never need to import those libraries to handle failures.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error meshd raises on purpose."""


class ConfigError(MeshError):
    """Bad configuration or command-line input; the message says what and how to fix it."""


class LocalProtocolError(MeshError):
    """This side tried something the protocol or a state table forbids."""


class RemoteProtocolError(MeshError):
    """A peer sent something we cannot accept. Counted and logged, never fatal."""


class DecodeError(RemoteProtocolError):
    """A frame could not be decoded. ``reason`` is a short stable token for counters."""

    reason = "malformed"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class MalformedFrame(DecodeError):
    reason = "malformed"


class TruncatedFrame(DecodeError):
    reason = "truncated"


class OversizedFrame(DecodeError):
    reason = "oversized"


class UnsupportedVersion(DecodeError):
    reason = "version"


class UnknownMessageType(DecodeError):
    reason = "unknown_type"


class AdmissionError(MeshError):
    """A peer failed admission: bad or missing proof, key mismatch, other mesh."""


class TokenError(ConfigError):
    """A join token is malformed or fails its checksum."""


class StateLockedError(MeshError):
    """Another daemon already owns this state directory."""


class StoreError(MeshError):
    """The local LMDB store failed (full, corrupt, unreadable)."""


class RequestError(MeshError):
    """A local request (a control operation) that cannot be honoured as asked: bad
    input, an unknown name, a refusal. ``code`` is a short stable token (``bad_request``,
    ``unknown_skill``, ``unknown_peer``, ``refused``, ``timeout``...) that the control edge
    passes on to the client, which maps it to an exit code."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


class ControlError(MeshError):
    """The control socket could not be reached or answered with an error (client side:
    ``code`` is the daemon's code, or ``not_running``, ``permission``...)."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class DaemonNotRunning(ControlError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="not_running")
