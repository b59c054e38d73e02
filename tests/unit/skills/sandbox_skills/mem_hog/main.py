"""Asks for 1 GiB at once."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    block = bytearray(1 << 30)
    return len(block)
