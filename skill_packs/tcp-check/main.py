"""tcp-check: is each TCP port of a host open, closed or filtered?

One TCP connect per port, several at once in threads (``concurrency``, kept below the
pack's ``processes`` limit, which counts threads too):

- ``open``: the connection was accepted (it is closed again at once, nothing is sent);
- ``closed``: the host answered with a reset (ECONNREFUSED);
- ``filtered``: no answer within ``timeout``, or the host or network is unreachable
  (``error`` then says which).

``latency_ms`` is the time the connect took (open and closed ports).
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

try:
    from meshd.skill import SkillFailure
except ImportError:  # meshd.skill not there yet: same signature

    class SkillFailure(Exception):  # type: ignore[no-redef]
        """A failure the skill understands: a short stable ``code`` and a message."""

        def __init__(self, code: str, message: str) -> None:
            super().__init__(f"{code}: {message}")
            self.code = code
            self.message = message


MAX_PORTS = 256
MAX_CONCURRENCY = 12
#: Small thread stacks: the memory limit is on address space, and 8 MiB stacks add up.
THREAD_STACK = 512 * 1024


def parse_ports(items: list[str] | str | int) -> list[int]:
    """Port numbers from ``["22", "80", "8000-8010"]`` (or one port), in the order given,
    without duplicates. Raises :class:`SkillFailure` ``bad_params``."""
    if isinstance(items, int | str):
        items = [str(items)]
    ports: list[int] = []
    seen: set[int] = set()
    for item in items:
        text = str(item).strip()
        lo_text, sep, hi_text = text.partition("-")
        try:
            lo = int(lo_text, 10)
            hi = int(hi_text, 10) if sep else lo
        except ValueError:
            raise SkillFailure("bad_params", f"bad port {text!r}: expected N or N-M") from None
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535) or hi < lo:
            raise SkillFailure("bad_params", f"bad port {text!r}: ports are 1..65535")
        if hi - lo + 1 > MAX_PORTS:
            raise SkillFailure("bad_params", f"range {text!r} is over {MAX_PORTS} ports")
        for port in range(lo, hi + 1):
            if port not in seen:
                seen.add(port)
                ports.append(port)
        if len(ports) > MAX_PORTS:
            raise SkillFailure("bad_params", f"more than {MAX_PORTS} ports")
    if not ports:
        raise SkillFailure("bad_params", "no port given")
    return ports


def resolve(host: str) -> tuple[int, str]:
    """(family, address) of ``host``: the first address getaddrinfo gives."""
    if not host or len(host) > 253 or any(c.isspace() for c in host):
        raise SkillFailure("bad_params", f"bad host {host!r}")
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SkillFailure("resolve_failed", f"cannot resolve {host!r}: {exc.strerror}") from None
    if not infos:
        raise SkillFailure("resolve_failed", f"no address for {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return int(family), str(sockaddr[0])


def check_port(family: int, address: str, port: int, timeout: float) -> dict[str, Any]:
    """One port's state: ``{"port", "state", "latency_ms", "error"}``."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    start = time.perf_counter()
    try:
        sock.connect((address, port))
    except TimeoutError:
        return {"port": port, "state": "filtered", "latency_ms": None, "error": "timeout"}
    except ConnectionRefusedError:
        ms = (time.perf_counter() - start) * 1000.0
        return {"port": port, "state": "closed", "latency_ms": round(ms, 3), "error": None}
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return {"port": port, "state": "filtered", "latency_ms": None, "error": name}
    finally:
        sock.close()
    ms = (time.perf_counter() - start) * 1000.0
    return {"port": port, "state": "open", "latency_ms": round(ms, 3), "error": None}


def _sweep(
    ctx: Any,
    pool: ThreadPoolExecutor,
    ports: list[int],
    batch: int,
    results: dict[int, dict[str, Any]],
    family: int,
    address: str,
    timeout: float,
) -> None:
    for start in range(0, len(ports), batch):
        if ctx.cancelled:
            raise SkillFailure("cancelled", f"cancelled after {len(results)} port(s)")
        chunk = ports[start : start + batch]
        for item in pool.map(lambda p: check_port(family, address, p, timeout), chunk):
            results[item["port"]] = item
        done = start + len(chunk)
        ctx.progress(100.0 * done / len(ports), f"{done}/{len(ports)} ports")


def run(ctx: Any) -> dict[str, Any]:
    params = ctx.params
    host = str(params["host"])
    ports = parse_ports(params["ports"])
    timeout = float(params.get("timeout", 1.0))
    workers = max(1, min(int(params.get("concurrency", 8)), MAX_CONCURRENCY, len(ports)))
    family, address = resolve(host)
    ctx.progress(0.0, f"checking {len(ports)} port(s) on {address}")

    results: dict[int, dict[str, Any]] = {}
    batch = max(workers, 16)
    previous_stack = threading.stack_size(THREAD_STACK)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            _sweep(ctx, pool, ports, batch, results, family, address, timeout)
    finally:
        threading.stack_size(previous_stack)

    ordered = [results[p] for p in ports]
    return {
        "host": host,
        "address": address,
        "family": "ipv6" if family == socket.AF_INET6 else "ipv4",
        "timeout": timeout,
        "ports": ordered,
        "open": [r["port"] for r in ordered if r["state"] == "open"],
        "closed": [r["port"] for r in ordered if r["state"] == "closed"],
        "filtered": [r["port"] for r in ordered if r["state"] == "filtered"],
    }
