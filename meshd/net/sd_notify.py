"""A tiny ``sd_notify`` client: tells systemd (``Type=notify``) when the daemon is ready,
when it stops, and that its event loop is alive (the watchdog).

No dependency, no libsystemd: a notification is one datagram of ``KEY=VALUE`` lines sent
to the Unix socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract
socket). Without ``$NOTIFY_SOCKET`` (a terminal, tests, another supervisor) every function
here does nothing. Nothing here raises: a failed send is logged at debug and reported as
``False``.

Watchdog: with ``WatchdogSec=`` in the unit, systemd sets ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``) and kills the service, then restarts it (``Restart=on-failure``), when
no ``WATCHDOG=1`` arrives within that interval. The pings come from an asyncio task on the
node's own event loop, every half interval: a loop that stalls (a blocking call, a
deadlock, a runaway callback) stops pinging, which is exactly what the watchdog is for.
"""

from __future__ import annotations

import asyncio
import os
import socket

from meshd import log

_log = log.get("meshd.notify")

#: s. The shortest ping period accepted, whatever ``$WATCHDOG_USEC`` says (a typo of a few
#: microseconds must not turn the daemon into a busy loop).
MIN_WATCHDOG_PERIOD = 0.05


def _address() -> str | None:
    """The notification socket's address (abstract names start with a NUL), or None."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if not path.startswith("/"):
        _log.debug("notify_socket_ignored", socket=path, reason="neither a path nor @name")
        return None
    return path


def enabled() -> bool:
    """True when a service manager listens (``$NOTIFY_SOCKET`` is set and usable)."""
    return _address() is not None


def notify(*fields: str) -> bool:
    """Send ``fields`` (``KEY=VALUE`` each) as one notification. True if it was sent."""
    address = _address()
    if address is None or not fields:
        return False
    message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block the event loop on a full queue: a lost ping is logged, and the
            # next one comes half an interval later.
            sock.setblocking(False)
            sock.sendto(message, address)
    except (OSError, ValueError) as exc:
        _log.debug("notify_failed", fields=[f.split("=", 1)[0] for f in fields], error=str(exc))
        return False
    return True


def ready(status: str | None = None) -> bool:
    """``READY=1`` (and ``STATUS=``): start-up is complete, the daemon answers."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: a graceful shutdown has begun."""
    return notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def status(text: str) -> bool:
    """``STATUS=``: a one-line state shown by ``systemctl status``."""
    return notify(f"STATUS={text}")


def watchdog_ping() -> bool:
    """``WATCHDOG=1``: the event loop is alive."""
    return notify("WATCHDOG=1")


def watchdog_period() -> float | None:
    """Seconds between two pings (half of ``$WATCHDOG_USEC``), or None when no watchdog
    is asked for this process (unset, unparsable, ``$WATCHDOG_PID`` names another
    process, or no notification socket)."""
    if not enabled():
        return None
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        interval = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        if usec:
            _log.debug("watchdog_ignored", usec=usec, pid=pid, reason="not a number")
        return None
    if interval <= 0:
        return None
    return max(interval / 2 / 1e6, MIN_WATCHDOG_PERIOD)


async def watchdog_loop(period: float) -> None:
    """Ping every ``period`` s until cancelled (runs on the node's event loop)."""
    while True:
        watchdog_ping()
        await asyncio.sleep(period)


def start_watchdog() -> asyncio.Task[None] | None:
    """Start the ping task on the running loop when a watchdog is asked for, else None."""
    period = watchdog_period()
    if period is None:
        return None
    _log.debug("watchdog_started", period_s=period)
    return asyncio.get_running_loop().create_task(watchdog_loop(period), name="watchdog")


def node_ready(status_text: str | None) -> asyncio.Task[None] | None:
    """The daemon is up and its control socket answers: ``READY=1`` with a status line,
    and the watchdog task when one is asked for (the caller holds it and cancels it at
    shutdown). Does nothing, and returns None, without a service manager."""
    if not enabled():
        return None
    ready(status_text)
    try:
        return start_watchdog()
    except Exception as exc:
        _log.debug("watchdog_not_started", error=str(exc))
        return None


def node_stopping() -> None:
    """A graceful shutdown of the daemon has begun: ``STOPPING=1``."""
    stopping("leaving the mesh")
