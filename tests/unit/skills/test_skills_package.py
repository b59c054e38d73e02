from __future__ import annotations

import subprocess
import sys

import pytest

import meshd.skills


def test_every_exported_name_resolves() -> None:
    for name in meshd.skills.__all__:
        assert getattr(meshd.skills, name) is not None
    assert set(meshd.skills._WHERE) == set(meshd.skills.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = meshd.skills.nope


def test_spec_imports_without_the_executor() -> None:
    code = (
        "import sys, meshd.skills.spec; "
        "print(any(m in sys.modules for m in "
        "('meshd.skills.executor', 'asyncio', 'structlog')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
