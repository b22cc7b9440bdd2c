"""Regression: every method's maps on fixed random models equal those stored from the code before
the core redesign (``tests/golden/cases.py`` lists the cases and wrote ``tests/golden/maps.pt``).

Equal to float32 rounding, not bit for bit: the stored maps were written on one CPU, and another
CPU's kernels (AVX-512, AVX2, scalar), MKL's code path, the thread count or the torch version add
the same terms in another order, which changes the last bits (measured: up to 3e-07, 21 eps of the
map's scale). The tolerance, ``conftest.float32_tolerance`` (192 eps of the map's scale, 2.3e-5),
is derived there; ``test_tolerance_still_tells_real_changes_apart`` shows that it does not hide a
real change. ``.ci/run`` runs this file a second time under a lower CPU capability
(``ATEN_CPU_CAPABILITY``) than the machine's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import EPS32, float32_tolerance

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from cases import cases  # noqa: E402

STORED = torch.load(GOLDEN / "maps.pt")
CASES = cases()


def _scale(t: torch.Tensor) -> float:
    return t.abs().max().item()


def test_every_stored_case_is_still_computed():
    assert set(STORED["maps"]) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_map_is_unchanged(name):
    got = CASES[name]()
    want = STORED["maps"][name]
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(got).all()
    diff = (got - want).abs().max().item()
    tol = float32_tolerance(_scale(want))
    assert diff <= tol, (f"{name}: max |diff| {diff:.3g} = {diff / max(_scale(want), 1e-12) / EPS32:.1f} eps "
                         f"of the map's scale {_scale(want):.3g}; tolerance {tol:.3g}")


def _shifted(t: torch.Tensor) -> torch.Tensor:
    """The map moved by one token along its last axis (an off-by-one in the token range)."""
    return torch.roll(t, 1, dims=-1)


#: (what changed, the stored map, the map with that change)
CHANGES = [
    ("spatial cosine -> cosine_per_head", "hf-eager-image-cosine", "hf-eager-image-cosine_per_head"),
    ("spatial cosine -> attention", "hf-eager-image-cosine", "hf-eager-image-attention"),
    ("spatial cosine -> uniform (text)", "hf-eager-text-cosine", "hf-eager-text-uniform"),
    ("last layer -> first layer", "hf-eager-image-cosine", "hf-eager-image-first-layer"),
    ("one layer -> two layers", "hf-eager-image-cosine", "hf-eager-image-two-layers"),
    ("model's heads -> single_head", "seq_first-image", "seq_first-image-single_head"),
    ("one-token shift (text)", "hf-eager-text-cosine", None),
    ("one-patch shift (image)", "hf-sdpa-image-cosine", None),
    ("one-token shift (MHA text)", "batch_first-text", None),
]


@pytest.mark.parametrize("what, name, changed", CHANGES, ids=[c[0] for c in CHANGES])
def test_tolerance_still_tells_real_changes_apart(what, name, changed):
    """A real change moves a map by orders of magnitude more than the tolerance (measured ratios:
    ``pytest tests/test_golden_maps.py -k real_changes -s`` prints them; 5,500 to 124,000 today, and
    the largest rounding difference between CPUs is 1/6 of the tolerance)."""
    want = STORED["maps"][name]
    other = _shifted(want) if changed is None else STORED["maps"][changed]
    ratio = (other - want).abs().max().item() / float32_tolerance(_scale(want))
    print(f"{what}: the change is {ratio:,.0f} x the tolerance")
    assert ratio > 100, f"{what}: only {ratio:.3g} x the tolerance"
