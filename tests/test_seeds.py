"""The package's ShapesCLIP seed ranges (captum_gradeclip.shapes.seeds) are disjoint, so no study,
tuning step or training run sees another one's scenes; the modules read their ranges from there."""

from __future__ import annotations

import itertools

import pytest

from captum_gradeclip.shapes.seeds import SEEDS, SHARED


def test_every_pair_of_ranges_is_disjoint_unless_declared_shared():
    clashes = [(a.name, b.name) for a, b in itertools.combinations(SEEDS.values(), 2)
               if a.overlaps(b) and (a.name, b.name) not in SHARED and (b.name, a.name) not in SHARED]
    assert clashes == []


def test_the_declared_shared_pairs_really_overlap():
    for a, b in SHARED:
        assert SEEDS[a].overlaps(SEEDS[b]), (a, b)


def test_the_overlap_test_itself_tells_touching_from_overlapping():
    from captum_gradeclip.shapes.seeds import SeedRange

    a, b, c = SeedRange("a", 0, 10, ""), SeedRange("b", 10, 20, ""), SeedRange("c", 9, 11, "")
    assert not a.overlaps(b) and a.overlaps(c) and b.overlaps(c)


def test_the_modules_read_their_ranges_from_the_registry():
    from captum_gradeclip.analysis import attributes, concreteness, decomposition
    from captum_gradeclip.finetune import evaluate
    from captum_gradeclip.segment import shapes as segment_shapes

    assert decomposition.DECOMPOSITION_SEED_START == SEEDS["analysis-decomposition"].start
    assert concreteness.CONCRETENESS_SEED_START == SEEDS["analysis-concreteness"].start
    assert attributes.ATTRIBUTES_SEED_START == SEEDS["analysis-attributes"].start
    assert attributes.BINDING_SEED_START == SEEDS["analysis-binding"].start
    assert evaluate.EVAL_SEED_START == SEEDS["finetune-eval"].start
    assert evaluate.CALIB_SEED_START == SEEDS["finetune-calibration"].start
    assert segment_shapes.VALIDATION_SEED == SEEDS["segment-validation"].start


def test_first_refuses_more_seeds_than_the_range_holds():
    r = SEEDS["study-choose"]
    assert list(r.first(2)) == [10_000, 10_001]
    with pytest.raises(ValueError, match="60"):
        r.first(61)
