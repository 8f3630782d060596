from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "build" / "artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    if not (ARTIFACTS / "manifest.json").exists():
        pytest.fail("build/artifacts is missing: run `nox -s artifacts` (the tests session does)")
    return ARTIFACTS
