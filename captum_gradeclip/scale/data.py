"""The work list of a dataset job and the dataset that decodes it.

A job is a sorted list of :class:`WorkItem` (an image path relative to the input root and the
texts to explain it for), built from a folder and ``--prompts`` (every image against every
prompt), ``--pairs`` (a JSON-lines file of per-image texts) or ``--class-prompts`` (an
ImageNet-style tree of class folders, every image against every class's prompt).
:class:`ImageFolderDataset` opens and preprocesses one item, in a ``DataLoader`` worker; a file
that cannot be decoded becomes an error record, never an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from .._io import CLIError

#: The image files a folder job reads (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class WorkItem:
    """One image of the job: ``image`` (its path relative to the root, with ``/``) and ``texts``."""

    image: str
    texts: Tuple[str, ...]


class Example(NamedTuple):
    """What a dataset of a job returns for one index: the image's key (its relative path),
    ``pixels`` ``(3, H, W)`` and its ``texts``. A dataset for :func:`~.engine.explain_dataset`
    may return any ``(key, pixels, texts)`` tuple."""

    image: str
    pixels: Any
    texts: Sequence[str]


def scan_images(root: Path) -> List[str]:
    """The image files under ``root`` (recursive), as sorted relative ``/`` paths.

    Raises:
        CLIError: ``root`` is not a folder, or holds no image.
    """
    if not root.is_dir():
        raise CLIError(f"--images must be a folder of images, got {root}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CLIError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def _text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise CLIError(f"cannot read {flag} {path} as UTF-8 text ({type(e).__name__})") from None


def read_prompts(path: str) -> List[str]:
    """The non-empty lines of a prompt file, stripped, each once (in first-seen order).

    Raises:
        CLIError: no such file, or no prompt in it.
    """
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--prompts must be a text file with one prompt per line, got {path}")
    prompts = list(dict.fromkeys(ln.strip() for ln in _text(p, "--prompts").splitlines() if ln.strip()))
    if not prompts:
        raise CLIError(f"no prompts in {path}")
    return prompts


def prompt_items(root: Path, prompts: Sequence[str]) -> List[WorkItem]:
    """Every image under ``root`` against every prompt."""
    texts = tuple(prompts)
    return [WorkItem(f, texts) for f in scan_images(root)]


def pair_items(root: Path, pairs: str) -> List[WorkItem]:
    """The images and texts of a JSON-lines file ``{"image": "rel/path.jpg", "texts": [...]}``
    (lines naming the same image are merged, sorted by image).

    Raises:
        CLIError: no such file, a line that is not such an object, or no pairs.
    """
    p = Path(pairs)
    if not p.is_file():
        raise CLIError(f"--pairs must be a JSON-lines file, got {pairs}")
    merged: dict = {}
    for n, line in enumerate(_text(p, "--pairs").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image, texts = rec["image"], rec["texts"]
        except (ValueError, KeyError, TypeError):
            raise CLIError(f"{pairs}:{n}: expected {{\"image\": \"rel/path.jpg\", \"texts\": [...]}}, "
                           f"got {line[:80]!r}") from None
        if not isinstance(image, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise CLIError(f"{pairs}:{n}: \"image\" must be a string and \"texts\" a list of strings")
        merged.setdefault(Path(image).as_posix(), []).extend(texts)
    if not merged:
        raise CLIError(f"no pairs in {pairs}")
    if not root.is_dir():
        raise CLIError(f"--images must be the folder the pairs' paths are relative to, got {root}")
    return [WorkItem(k, tuple(dict.fromkeys(v))) for k, v in sorted(merged.items())]


def class_items(root: Path, template: str) -> List[WorkItem]:
    """An ImageNet-style tree ``root/CLASS/*.jpg``: every image against every class's prompt
    ``template.format(CLASS with '_' as ' ')``, classes in sorted folder order.

    Raises:
        CLIError: a template without ``{}``, or no class folder with images.
    """
    if "{}" not in template:
        raise CLIError(f"--class-prompts must contain {{}} for the class name, got {template!r}")
    files = [f for f in scan_images(root) if "/" in f]
    classes = sorted({f.split("/", 1)[0] for f in files})
    if not classes:
        raise CLIError(f"no class folders with images under {root} (expected ROOT/CLASS/IMAGE)")
    texts = tuple(template.format(c.replace("_", " ")) for c in classes)
    return [WorkItem(f, texts) for f in files]


class ImageFolderDataset:
    """A map-style dataset over work items: ``[i] -> Example(image, pixels (3, H, W), texts)``.

    Args:
        root: the folder the items' paths are relative to.
        items: the work list.
        to_pixels: ``[PIL image] -> (1, 3, H, W)``, e.g. ``LoadedCLIP.pixels``.
    """

    def __init__(self, root: Path, items: Sequence[WorkItem],
                 to_pixels: Callable[[list], Any]) -> None:
        self.root, self.items, self.to_pixels = Path(root), list(items), to_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        """Raises:
            CLIError: the file is missing, unreadable or truncated (the engine makes it an error row)."""
        from .._io import open_image

        item = self.items[i]
        return Example(item.image, self.to_pixels([open_image(str(self.root / item.image))])[0], item.texts)


def key_of(dataset: Any, i: int) -> Optional[str]:
    """The key of item ``i`` without decoding it, where the dataset can tell (for error rows)."""
    items = getattr(dataset, "items", None)
    return items[i].image if items is not None else None
