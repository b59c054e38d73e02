"""Burns CPU forever."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    while True:
        pass
