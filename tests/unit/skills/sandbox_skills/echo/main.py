"""Returns what it was given."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    return {"params": ctx.params, "task_id": ctx.task_id, "checkpoint": ctx.checkpoint_data}
