"""The least a skill can do."""


def run(ctx: object) -> object:
    return 1
