"""Training pairs for fine-grained fine-tuning: (image, caption, phrases of the caption).

Two sources, both indexed by (step, position in the global batch) so that every process of a
distributed run takes its own slice of the same global batch and a resumed run sees the same data:

- :class:`ShapesSource` (default): synthetic ShapesCLIP scenes rendered on the fly, seeds
  :data:`FINETUNE_SEED_OFFSET` + ``seed * 10**9`` + ``step * batch`` + position (disjoint from
  ShapesCLIP's training seeds, 1,000,000 + ``seed * 10**8`` + ..., and from the evaluation's
  seeds below 1,000,000). The caption names one, two or all objects as ShapesCLIP's own training
  did (``captions="mixed"``, the default) or always all of them (``"all"``), in a random order
  ("a red circle and a blue square"); the phrases are the named objects' prompts; their true
  masks come along for the oracle ablation.
- :class:`PairsSource`: a JSON-lines file, one ``{"image": PATH, "caption": TEXT, "phrases":
  [TEXT, ...]}`` per line (``PATH`` relative to the file; without ``"phrases"`` the caption is
  split on a separator the user gives, or with ``phrases="auto"`` mined by :mod:`.phrases`), shuffled by a seeded permutation per epoch. The phrases'
  maps may come mined beforehand from the dataset engine's Parquet output
  (:func:`attach_mined_maps`) instead of from the teacher during training.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor

from .._io import open_image, read_utf8
from ..errors import InputError

FINETUNE_SEED_OFFSET = 5_000_000_000


class DataError(InputError, ValueError):
    """Training data that cannot be used (a caption without phrases, a phrase not in its caption,
    an image that does not load); a ``ValueError`` for library callers, a one-line error in the CLI."""


@dataclass
class Sample:
    """One training pair.

    Attributes:
        image: RGB PIL image. caption: the caption. phrases: ``K`` phrases, each in the caption
            (``K >= 1``, except for a mined caption that yielded none: ``K = 0``, only the
            image–caption term sees it).
        masks: ``(K, H, W)`` bool true masks of the phrases (ShapesCLIP only), else ``None``.
        key: the ``"image"`` string of a pairs file. maps: ``(K, h, w)`` the phrases' maps mined
            beforehand (:func:`attach_mined_maps`), else ``None`` (the teacher mines them).
    """

    image: Any
    caption: str
    phrases: List[str]
    masks: Optional[Tensor] = None
    key: Optional[str] = None
    maps: Optional[Tensor] = None


def check_phrases(caption: str, phrases: Sequence[str], where: str, allow_empty: bool = False) -> List[str]:
    """The phrases, checked: at least one (none allowed with ``allow_empty``), each a non-empty
    string found in ``caption`` (case-insensitive).

    Raises:
        DataError: no phrases, an empty or non-string phrase, or a phrase not in the caption
            (``where`` names the pair in the message).
    """
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: the caption must be a non-empty string, got {caption!r}")
    phrases = list(phrases)
    if not phrases and not allow_empty:
        raise DataError(f"{where}: the caption {caption!r} has no phrases; give \"phrases\", a separator "
                        "that splits it (--separator) or mine them (--phrases auto)")
    for p in phrases:
        if not isinstance(p, str) or not p.strip():
            raise DataError(f"{where}: phrases must be non-empty strings, got {p!r}")
        if p.strip().lower() not in caption.lower():
            raise DataError(f"{where}: the phrase {p!r} is not in the caption {caption!r}; phrases must be "
                            "parts of their caption")
    return [p.strip() for p in phrases]


def split_phrases(caption: str, separator: str) -> List[str]:
    """The caption's non-empty parts between ``separator`` s, e.g. ``" and "``."""
    return [p.strip() for p in caption.split(separator) if p.strip()]


#: Where a pairs file's phrases come from: its ``"phrases"`` (or ``separator``) only, or also mined.
PHRASE_MODES = ("given", "auto")


def unphrased(samples: Sequence[Sample]) -> List[str]:
    """The image keys of the samples without phrases (mined captions that yielded none)."""
    return [str(s.key) for s in samples if not s.phrases]


#: How ShapesCLIP training captions name a scene's objects.
CAPTION_MODES = ("mixed", "all")


def _named(n: int, rng: random.Random, mode: str) -> List[int]:
    """Which of ``n`` objects the caption names, in order: ``"all"`` (shuffled), or ``"mixed"``
    (ShapesCLIP's own training mix: one object half of the time, two in 30 %, all in 20 %)."""
    order = list(range(n))
    rng.shuffle(order)
    if mode == "all" or n == 1:
        return order
    r = rng.random()
    return order[:1] if r < 0.5 else order[:2] if r < 0.8 else order


def shapes_sample(seed: int, captions: str = "mixed") -> Sample:
    """The ShapesCLIP scene ``seed`` with a caption naming some (``captions="mixed"``) or all of
    its objects in a seeded random order; the phrases are the named objects.

    Raises:
        ValueError: an unknown ``captions`` mode.
    """
    from ..shapes.scenes import render_scene

    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {CAPTION_MODES}, got {captions!r}")
    scene = render_scene(seed=seed)
    order = _named(len(scene.objects), random.Random(seed), captions)
    return Sample(image=scene.image, caption=scene.caption(order), phrases=[scene.prompts[i] for i in order],
                  masks=scene.masks[order])


class ShapesSource:
    """ShapesCLIP scenes on the fly (see the module docstring for the seeds and ``captions``)."""

    def __init__(self, seed: int = 0, captions: str = "mixed") -> None:
        self.seed = seed
        self.captions = captions

    def fingerprint(self) -> str:
        """What identifies the data: the scenes' seeds and caption mode."""
        return f"ShapesCLIP scenes, seed {self.seed}, captions {self.captions}"

    def batch(self, step: int, batch: int, start: int, stop: int) -> List[Sample]:
        """Positions ``start .. stop - 1`` of the global batch (size ``batch``) of ``step``."""
        base = FINETUNE_SEED_OFFSET + self.seed * 10**9 + step * batch
        return [shapes_sample(base + j, self.captions) for j in range(start, stop)]


def _read_line(line: str, where: str, root: Path, separator: Optional[str], mode: str) -> Sample:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not JSON ({e.msg})") from None
    if not isinstance(row, dict) or "image" not in row or "caption" not in row:
        raise DataError(f"{where}: expected an object with \"image\" and \"caption\" (and \"phrases\"), got {line.strip()[:80]!r}")
    caption = row["caption"]
    if "phrases" in row:
        if not isinstance(row["phrases"], list):
            raise DataError(f"{where}: \"phrases\" must be a list of strings, got {row['phrases']!r}")
        phrases = row["phrases"]
    elif separator is not None and isinstance(caption, str):
        phrases = split_phrases(caption, separator)
    elif mode == "auto" and isinstance(caption, str):
        from .phrases import mine_phrases

        phrases = mine_phrases(caption)
    else:
        phrases = []
    phrases = check_phrases(caption, phrases, where, allow_empty=mode == "auto")
    if not isinstance(row["image"], str) or not row["image"]:
        raise DataError(f"{where}: \"image\" must be a path (a non-empty string), got {row['image']!r}")
    path = Path(row["image"])
    try:
        image = open_image(str(path if path.is_absolute() else root / path))
    except InputError as e:
        raise DataError(f"{where}: {e}") from None
    return Sample(image=image, caption=caption, phrases=phrases, key=row["image"])


def read_pairs(path: "str | Path", separator: Optional[str] = None, phrases: str = "given") -> List[Sample]:
    """Read and check a pairs file (one JSON object per line; see the module docstring); images load now.

    Args:
        path: the file. separator: split captions without ``"phrases"`` on it.
        phrases: ``"given"`` (each caption needs ``"phrases"`` or a ``separator``) or ``"auto"``
            (captions without either get :func:`~.phrases.mine_phrases`; those that yield none,
            or whose ``"phrases"`` is empty, are kept with no phrases: list them with :func:`unphrased`).

    Raises:
        DataError: a missing file, a bad line, a caption without phrases (``"given"``), a phrase
            not in its caption, or an image that does not load (the message names the line).
        ValueError: an unknown ``phrases`` mode.
    """
    if phrases not in PHRASE_MODES:
        raise ValueError(f"phrases must be one of {PHRASE_MODES}, got {phrases!r}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pairs file not found: {path}")
    samples = [_read_line(line, f"{path}:{n}", path.parent, separator, phrases)
               for n, line in enumerate(read_utf8(path, "the pairs file", DataError).splitlines(), 1) if line.strip()]
    if not samples:
        raise DataError(f"{path} holds no pairs")
    return samples


def attach_mined_maps(samples: Sequence[Sample], maps_dir: "str | Path") -> None:
    """Give each sample the maps of its phrases from a dataset job's Parquet output
    (``captum-gradeclip explain-dataset``; :func:`captum_gradeclip.scale.read_maps`), matched by
    (image key, text): run the job on the pairs file's folder, so that its image keys are the
    pairs file's ``"image"`` strings, with the phrases as the texts.

    Raises:
        DataError: a (image, phrase) the job has no map for, or no job output in ``maps_dir``.
    """
    from ..scale.table import read_maps

    try:
        mined = {(r["image"], r["text"]): r["map"] for r in read_maps(maps_dir, columns=["image", "text", "map"])}
    except FileNotFoundError as e:
        raise DataError(f"--maps: {e}") from None
    for s in samples:
        if not s.phrases:
            continue
        missing = [p for p in s.phrases if (s.key, p) not in mined]
        if missing:
            raise DataError(f"{maps_dir} has no map of image {s.key!r} for {missing}; mine them with "
                            "explain-dataset on the pairs file's folder, the phrases as texts")
        s.maps = torch.stack([mined[(s.key, p)].float() for p in s.phrases])


class PairsSource:
    """The pairs of a file, in a seeded random order per epoch."""

    def __init__(self, samples: Sequence[Sample], seed: int = 0) -> None:
        self.samples = list(samples)
        self.seed = seed
        #: whether every sample carries mined maps (then no teacher is needed)
        self.mined = all(s.maps is not None for s in self.samples if s.phrases)

    def fingerprint(self) -> str:
        """sha256 of the pairs (keys, captions, phrases, image pixels, mined maps): what identifies
        the data of a run."""
        import hashlib

        h = hashlib.sha256(str(self.seed).encode())
        for s in self.samples:
            h.update(json.dumps([s.key, s.caption, s.phrases, list(s.image.size)]).encode())
            h.update(s.image.tobytes())
            if s.maps is not None:
                h.update(s.maps.float().numpy().tobytes())
        return h.hexdigest()

    def batch(self, step: int, batch: int, start: int, stop: int) -> List[Sample]:
        """Positions ``start .. stop - 1`` of the global batch (size ``batch``) of ``step``."""
        n = len(self.samples)
        out = []
        for j in range(start, stop):
            k = step * batch + j
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + k // n))
            out.append(self.samples[int(perm[k % n])])
        return out
