"""The mutants stay applicable: each edit finds its text exactly once in the appliance it mutates."""

import pytest

from conformance.mutation import MUTANTS
from conformance.support import REPO


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_once(mutant):
    assert (REPO / "appliance" / mutant.file).read_text().count(mutant.find) == 1
    assert mutant.find != mutant.replace and mutant.breaks


def test_mutant_names_are_unique():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
