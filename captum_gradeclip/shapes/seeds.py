"""Every range of ShapesCLIP scene seeds the package uses, in one place.

A scene is a pure function of its seed (:func:`captum_gradeclip.shapes.render_scene`), so a
"held-out" set is a range of seeds that nothing else trains, tunes or reports on. Each use below
owns its range; ``tests/test_seeds.py`` checks that the ranges are pairwise disjoint, except the
pairs listed in :data:`SHARED`, which are evaluation sets of the *base* model read by two
measures on purpose (written there with the reason). A new use takes a free range here and reads
it from :data:`SEEDS`, rather than writing a literal in its own module.

The ablation's three ranges (``finetune-ablation-*``) are the ones its published table was made
on (``benchmarks/finetune_ablation.py``); the analyses' ranges were moved above them so that no
two studies share a scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

__all__ = ["SEEDS", "SHARED", "SeedRange"]


@dataclass(frozen=True)
class SeedRange:
    """Seeds ``start <= seed < stop`` and what they are used for."""

    name: str
    start: int
    stop: int
    use: str

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def first(self, n: int) -> range:
        """The first ``n`` seeds of the range.

        Raises:
            ValueError: ``n`` is negative or larger than the range.
        """
        if not 0 <= n <= len(self):
            raise ValueError(f"{self.name}: {n} seeds asked, the range holds {len(self)} ({self.start}-{self.stop - 1})")
        return range(self.start, self.start + n)

    def overlaps(self, other: "SeedRange") -> bool:
        return self.start < other.stop and other.start < self.stop


_RANGES: Tuple[SeedRange, ...] = (
    SeedRange("benchmark", 0, 100, "the ShapesCLIP benchmark's scenes (`benchmark --n 100`), demo and example scenes"),
    SeedRange("shapes-evaluate", 0, 500, "shapes.evaluate's recognition and pointing measures of ShapesCLIP"),
    SeedRange("study-choose", 10_000, 10_060, "benchmarks/study.py: the configuration is chosen here"),
    SeedRange("finetune-eval", 500_000, 500_500, "finetune's held-out metrics (region top-1, mIoU, recognition)"),
    SeedRange("segment-validation", 500_000, 500_100, "the ShapesCLIP segmentation benchmark's threshold (segment/shapes.py)"),
    SeedRange("finetune-calibration", 600_000, 600_200, "finetune's segmentation background level"),
    SeedRange("finetune-ablation-choose", 700_000, 700_150, "benchmarks/finetune_ablation.py: variant chosen here"),
    SeedRange("finetune-ablation-calibration", 750_000, 750_100, "benchmarks/finetune_ablation.py: background level"),
    SeedRange("finetune-ablation-report", 800_000, 800_150, "benchmarks/finetune_ablation.py: reported here"),
    SeedRange("finetune-curve-choose", 820_000, 820_600, "benchmarks/finetune_ablation.py curve: the default chosen here"),
    SeedRange("finetune-curve-report", 830_000, 831_000, "benchmarks/finetune_ablation.py curve: reported here"),
    SeedRange("shapes-train", 1_000_000, 100_000_000, "ShapesCLIP's and ShapesViT's training scenes (seed 0 runs)"),
    SeedRange("analysis-decomposition", 200_000_000, 200_050_000, "analyze decomposition"),
    SeedRange("analysis-concreteness", 200_050_000, 200_100_000, "analyze concreteness"),
    SeedRange("analysis-attributes", 200_100_000, 200_150_000, "analyze attributes: three-object probe scenes"),
    SeedRange("analysis-binding", 200_150_000, 200_200_000, "analyze attributes: two-object binding scenes"),
    SeedRange("analysis-cost", 200_200_000, 200_210_000, "benchmarks/analysis_cost.py"),
    SeedRange("finetune-data", 5_000_000_000, 6_000_000_000, "fine-tuning's training scenes"),
)

#: every range by name
SEEDS: Dict[str, SeedRange] = {r.name: r for r in _RANGES}

#: pairs of ranges that overlap on purpose, with the reason
SHARED: Dict[Tuple[str, str], str] = {
    ("benchmark", "shapes-evaluate"): "both score the shipped model on the same first scenes; neither tunes anything",
    ("segment-validation", "finetune-eval"): "the segmentation benchmark picks its threshold for the shipped model on the "
                                             "first of fine-tuning's held-out scenes; fine-tuning trains on none of them "
                                             "and reads no threshold from there (its own level: finetune-calibration)",
}
