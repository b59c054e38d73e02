"""Tries to write a file at params path."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    try:
        with open(ctx.params["path"], "w") as file:
            file.write("written from the sandbox")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "written"
