"""Reports progress and saves a checkpoint at each of three steps."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    for i in range(3):
        ctx.progress(i * 50, f"step {i}")
        ctx.checkpoint(bytes([i]))
    return "done"
