"""The authors' protocol's inputs: a labelled image source (a ``DIR/CLASS/IMAGE`` tree, or what
:mod:`captum_gradeclip.scale.sources` reads from a Hugging Face dataset or WebDataset shards), the
order a short run takes it in (one class after the other), and the job's dataset of uint8 images
shrunk to the authors' 640 px."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor

from ..errors import InputError
from ..images import shrink, to_uint8


@dataclass(frozen=True)
class LabelledImages:
    """A labelled image source: ``keys`` (sorted work order), ``labels`` (class indices) and
    ``open(i) -> PIL image``. :func:`folder_source` builds one from ``DIR/CLASS/IMAGE``; the
    readers of :mod:`captum_gradeclip.scale.sources` build others."""

    keys: List[str]
    labels: List[int]
    open: Callable[[int], Any]
    classes: List[str]


def folder_source(root: Path) -> LabelledImages:
    """``root/CLASS/IMAGE`` (recursive under each class): labels in sorted folder order.

    Raises:
        InputError: not a folder, or no class folder with images.
    """
    from ..scale.data import scan_images

    files = [f for f in scan_images(root) if "/" in f]
    classes = sorted({f.split("/", 1)[0] for f in files})
    if not classes:
        raise InputError(f"no class folders with images under {root} (expected DIR/CLASS/IMAGE)")
    index = {c: i for i, c in enumerate(classes)}
    return LabelledImages(files, [index[f.split("/", 1)[0]] for f in files], _FolderOpen(root, files), classes)


@dataclass(frozen=True)
class _FolderOpen:
    """``i -> PIL image`` of ``root / files[i]`` (picklable, for DataLoader workers)."""

    root: Path
    files: List[str]

    def __call__(self, i: int) -> Any:
        from .._io import open_image

        return open_image(str(self.root / self.files[i]))


def round_robin(labels: Sequence[int], n: Optional[int]) -> List[int]:
    """The first ``n`` indices (all for ``None``) taking one image per class in turn, so that a
    short run covers the classes (within a class, in the source's order)."""
    seen: Dict[int, int] = {}
    rank = []
    for i, c in enumerate(labels):
        rank.append((seen.get(c, 0), c, i))
        seen[c] = seen.get(c, 0) + 1
    order = [i for _, _, i in sorted(rank)]
    return order[:n] if n else order


class ProtocolImages:
    """The job's dataset: ``[j] -> (key, (3, H, W) uint8 shrunk to 640 px, (str(label),))``.
    A file that cannot be read raises (the engine makes it an error row)."""

    def __init__(self, source: LabelledImages, indices: Sequence[int]) -> None:
        self.source, self.indices = source, list(indices)
        self.items = [_Item(source.keys[i]) for i in self.indices]  # keys for error rows

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> Tuple[str, Tensor, Tuple[str]]:
        i = self.indices[j]
        return self.source.keys[i], to_uint8(shrink(self.source.open(i))), (str(self.source.labels[i]),)


@dataclass(frozen=True)
class _Item:
    image: str
