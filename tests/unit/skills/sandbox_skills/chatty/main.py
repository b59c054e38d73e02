"""Writes params size bytes to stdout and to stderr."""

import sys

from meshd import skill


def run(ctx: skill.Context) -> object:
    size = ctx.params["size"]
    sys.stdout.write("o" * size)
    sys.stderr.write("e" * size)
    return size
