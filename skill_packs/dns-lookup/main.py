"""dns-lookup: the addresses of a host name, as the host's own resolver sees them.

Uses ``socket.getaddrinfo`` (so ``/etc/hosts`` first, then DNS, as nsswitch says) in a
helper thread bounded by ``timeout``. The name is checked first (labels of letters,
digits, ``-`` and ``_``, 63 characters each, 253 in all): a malformed name fails with
``bad_name`` without asking any resolver.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
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


FAMILIES = {
    "any": socket.AF_UNSPEC,
    "ipv4": socket.AF_INET,
    "a": socket.AF_INET,
    "ipv6": socket.AF_INET6,
    "aaaa": socket.AF_INET6,
}
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")

#: getaddrinfo errors that mean "this name has no (such) address".
_NOT_FOUND = {
    getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, n)
}


def check_name(name: str) -> str:
    """``name`` without a trailing dot, or :class:`SkillFailure` ``bad_name``."""
    text = name.strip()
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    bare = text[:-1] if text.endswith(".") else text
    if not bare or len(bare) > 253 or not all(_LABEL.match(p) for p in bare.split(".")):
        raise SkillFailure("bad_name", f"{name!r} is not a valid host name")
    return bare


def lookup(name: str, family: int, timeout: float) -> list[tuple[int, str, str]]:
    """(family, address, canonical name) for each answer, in the resolver's order."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["infos"] = socket.getaddrinfo(
                name, None, family, socket.SOCK_STREAM, 0, socket.AI_CANONNAME
            )
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=work, name="dns-lookup", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise SkillFailure("timeout", f"no answer for {name!r} within {timeout:g} s")
    error = box.get("error")
    if isinstance(error, socket.gaierror):
        if error.errno in _NOT_FOUND:
            raise SkillFailure("not_found", f"{name!r}: {error.strerror}")
        raise SkillFailure("resolve_failed", f"{name!r}: {error.strerror}")
    if error is not None:
        raise SkillFailure("resolve_failed", f"{name!r}: {error}")
    out = []
    canon = ""
    for fam, _, _, canonname, sockaddr in box["infos"]:
        canon = canon or canonname
        out.append((int(fam), str(sockaddr[0]), canon))
    return out


def run(ctx: Any) -> dict[str, Any]:
    params = ctx.params
    name = check_name(str(params["name"]))
    family_word = str(params.get("family", "any")).strip().lower()
    if family_word not in FAMILIES:
        raise SkillFailure("bad_params", f"family must be any, ipv4 or ipv6, not {family_word!r}")
    timeout = float(params.get("timeout", 5.0))
    ctx.progress(0.0, f"resolving {name}")
    answers = lookup(name, FAMILIES[family_word], timeout)
    addresses: list[str] = []
    ipv4: list[str] = []
    ipv6: list[str] = []
    for fam, address, _ in answers:
        if address in addresses:
            continue
        addresses.append(address)
        (ipv6 if fam == socket.AF_INET6 else ipv4).append(address)
    ctx.progress(100.0, f"{len(addresses)} address(es)")
    return {
        "name": name,
        "family": {"a": "ipv4", "aaaa": "ipv6"}.get(family_word, family_word),
        "canonical_name": next((c for _, _, c in answers if c), name),
        "addresses": addresses,
        "ipv4": ipv4,
        "ipv6": ipv6,
    }
