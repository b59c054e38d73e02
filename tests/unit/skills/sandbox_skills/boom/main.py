"""Fails with an exception it did not expect."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    raise ValueError("bad thing")
