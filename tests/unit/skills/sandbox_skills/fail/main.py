"""Fails the way a skill understands."""

from meshd import skill


def run(ctx: skill.Context) -> object:
    raise skill.SkillFailure("disk_full", "no space left on the scratch disk")
