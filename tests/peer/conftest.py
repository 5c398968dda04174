"""SQLAlchemy's own test suite run directly and through jitproxy (bench/peer_suites.py)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "peer: runs a peer project's test suite (SQLAlchemy) directly and through jitproxy and gates on "
        "the differences; slow (minutes); deselect with -m 'not peer'",
    )
