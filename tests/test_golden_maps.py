"""Regression: every method's maps on fixed random models equal those stored from the code before
the core redesign (``tests/golden/cases.py`` lists the cases and wrote ``tests/golden/maps.pt``).

Bit for bit under the torch that wrote the file; under another torch version (CI's second
environment) kernels may differ in the last bits, so there the check is ``allclose`` at 1e-5 of
each map's scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from cases import cases  # noqa: E402

STORED = torch.load(GOLDEN / "maps.pt")
SAME_TORCH = STORED["torch"] == torch.__version__
CASES = cases()


def test_every_stored_case_is_still_computed():
    assert set(STORED["maps"]) == set(CASES)


#: the maps were written with torch's default on our 2-core machines; float sums may split
#: differently over another thread count
THREADS = 2


@pytest.mark.parametrize("name", sorted(CASES))
def test_map_is_unchanged(name):
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        got = CASES[name]()
    finally:
        torch.set_num_threads(before)
    want = STORED["maps"][name]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(got).all()
    if SAME_TORCH:
        assert torch.equal(got, want), f"{name}: max |diff| {(got - want).abs().max().item():.3g}"
    else:
        scale = want.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(got, want, atol=1e-5 * scale.item(), rtol=0)
