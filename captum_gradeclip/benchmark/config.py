"""The benchmark's settings as typed records: what the command line builds from its flags
(:mod:`.cli`) and Python callers build directly (``benchmarks/study.py``). The defaults here are
the flags' defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple


@dataclass(frozen=True)
class FaithfulnessConfig:
    """How deletion and insertion perturb an image (:func:`~captum_gradeclip.metrics.deletion`).

    Attributes:
        step: the share of the pixels removed (or inserted) per step, in ``(0, 1]``.
        replacement: what removed pixels become: ``"noise"``, ``"black"``, ``"blur"`` or ``"mean"``.
    """

    step: float = 0.005
    replacement: str = "noise"


@dataclass(frozen=True)
class ShapesConfig:
    """The ShapesCLIP protocol (:func:`~.protocols.run_shapes`).

    Attributes:
        n: held-out scenes (seeds ``0 ... n - 1``).
        model: a ShapesCLIP checkpoint folder (``None``: the shipped one).
        methods: only methods whose name contains one of these (``None``: all).
        batch: items explained per call.
        examples: example maps kept per method for the figure.
        word_replacement: the token replacing deleted words (one token of the vocabulary).
        faithfulness: deletion / insertion settings.
    """

    n: int = 100
    model: Optional[str] = None
    methods: Optional[Tuple[str, ...]] = None
    batch: int = 16
    examples: int = 1
    word_replacement: str = "."
    faithfulness: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)


@dataclass(frozen=True)
class FolderConfig:
    """The folder protocol (:func:`~.folder.run_folder`): any CLIP on a folder of images.

    Attributes:
        images: the folder of images (its top level). prompts: a text file, one prompt a line.
        out_dir: where the curves (``out_dir/curves``) go.
        n: only the first ``n`` images (sorted by name; ``None``: all).
        model, open_clip: the model, as :func:`~captum_gradeclip.models.load` takes them.
        methods, batch: as in :class:`ShapesConfig`.
        faithfulness: deletion / insertion settings.
    """

    images: str
    prompts: str
    out_dir: str = "benchmark_out"
    n: Optional[int] = None
    model: Optional[str] = None
    open_clip: Optional[str] = None
    methods: Optional[Tuple[str, ...]] = None
    batch: int = 16
    faithfulness: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)
