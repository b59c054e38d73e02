"""Shared fixture of the namespace lab tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from netlab import Host, probe


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """Module-level check: skip the whole module, with the reason, where the lab cannot
    be built (no root or user namespaces, no iproute2)."""
    support = probe()
    if not support.ok or support.host is None:
        pytest.skip(f"namespace lab unavailable: {support.reason}")
    try:
        yield support.host
    finally:
        support.host.close()
