"""Tries a TCP connection to params host:port."""

import socket

from meshd import skill


def run(ctx: skill.Context) -> object:
    try:
        with socket.create_connection((ctx.params["host"], ctx.params["port"]), timeout=2):
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
