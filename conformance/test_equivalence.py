"""The same model computes the same function whatever CPU serves it (see equivalence.py)."""

import pytest

from . import equivalence


@pytest.mark.core
def test_numerical_equivalence_with_native_references(endpoint, served_variant, native_references, record):
    """Top-k next-token log-probabilities of fixed prompts, as served through the appliance, against
    the same engine build run natively here with the same variant (and, looser, every other one)."""
    served = equivalence.profile(endpoint.base_url, {"Authorization": f"Bearer {endpoint.api_key}"},
                                 endpoint.tls_context())
    figures = equivalence.assert_equivalent(served, native_references, served_variant)
    record({"variant": served_variant, "positions": figures[served_variant]["positions"],
            **{f"diff_vs_{name}": f["max_logprob_diff"] for name, f in figures.items()}})
