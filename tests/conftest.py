from pathlib import Path

import pytest

from conformance.support import REPO

ARTIFACTS = REPO / "build" / "artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    if not (ARTIFACTS / "manifest.json").exists():
        pytest.fail("build/artifacts is missing: run `nox -s artifacts` (the tests session does)")
    return ARTIFACTS
