"""Small helpers shared by the suite's fixtures and checks."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def not_applicable(reason: str):
    """A check the target cannot run is reported as such (and fails the release profile)."""
    pytest.skip(f"not applicable: {reason}")
