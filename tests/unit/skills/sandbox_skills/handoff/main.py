"""Saves a checkpoint and asks for the task to move to another node."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    ctx.checkpoint(b"half-way")
    ctx.handoff(ctx.params.get("to"))
