"""Returns something msgpack cannot encode."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    return object()
