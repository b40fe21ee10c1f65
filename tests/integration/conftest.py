"""The graph's fixtures live in tests/conftest.py (tests/security uses them too); the names
the suites import are re-exported here."""

from tests.conftest import START_TIMEOUT_S, UPSTREAM_KEY_ENV, Graph

__all__ = ["START_TIMEOUT_S", "UPSTREAM_KEY_ENV", "Graph"]
