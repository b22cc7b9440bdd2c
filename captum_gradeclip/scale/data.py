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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from .._io import read_utf8
from ..errors import InputError

#: The image files a folder job reads (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class WorkItem:
    """One image of the job: ``image`` (its path relative to the root, with ``/``) and ``texts``;
    ``problem``: why it cannot be read (an error row), found while building the work list."""

    image: str
    texts: Tuple[str, ...]
    problem: Optional[str] = None


def storable_key(rel: str) -> Tuple[str, Optional[str]]:
    """A relative path (or a tar member's name) as a key that can be stored (UTF-8), and the
    problem of a name that is not valid UTF-8 (shown with backslash escapes: ``a\\xff.png``)."""
    try:
        rel.encode("utf-8")
        return rel, None
    except UnicodeEncodeError:
        shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return shown, f"the file name {shown!r} is not valid UTF-8; rename it to explain it"


class Example(NamedTuple):
    """What a dataset of a job returns for one index: the image's key (its relative path),
    ``pixels`` ``(3, H, W)`` and its ``texts``. A dataset for :func:`~.engine.explain_dataset`
    may return any ``(key, pixels, texts)`` tuple."""

    image: str
    pixels: Any
    texts: Sequence[str]


def scan_images(root: Path) -> List[str]:
    """The image files under ``root`` (recursive), as sorted relative ``/`` paths; a name with an
    image suffix that is not a folder counts (a broken link becomes an error row, not nothing).

    Raises:
        InputError: ``root`` is not a folder, or holds no image.
    """
    if not root.is_dir():
        raise InputError(f"--images must be a folder of images, got {root}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_symlink() or p.is_file()) and not p.is_dir())
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def _folder_item(rel: str, texts: Tuple[str, ...]) -> WorkItem:
    key, problem = storable_key(rel)
    return WorkItem(key, texts, problem)


def read_prompts(path: str) -> List[str]:
    """The non-empty lines of a prompt file, stripped, each once (in first-seen order).

    Raises:
        InputError: no such file, or no prompt in it.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--prompts must be a text file with one prompt per line, got {path}")
    prompts = list(dict.fromkeys(ln.strip() for ln in read_utf8(p, "--prompts").splitlines() if ln.strip()))
    if not prompts:
        raise InputError(f"no prompts in {path}")
    return prompts


def prompt_items(root: Path, prompts: Sequence[str]) -> List[WorkItem]:
    """Every image under ``root`` against every prompt."""
    texts = tuple(prompts)
    return [_folder_item(f, texts) for f in scan_images(root)]


def _inside(image: str, root: Path, allow_outside: bool, where: str) -> Tuple[str, Optional[str]]:
    """A pairs file's image path as a key, and the problem of a path that leaves ``root``
    (absolute, or ``..`` above it) unless ``allow_outside``."""
    norm = os.path.normpath(image).replace(os.sep, "/") if image else image
    if allow_outside or not (os.path.isabs(image) or norm == ".." or norm.startswith("../")):
        return Path(image).as_posix(), None
    return Path(image).as_posix(), (f"{where}: the image {image!r} lies outside --images {root}; "
                                    "give paths relative to it, or pass --allow-outside-images")


def pair_items(root: Path, pairs: str, allow_outside: bool = False) -> List[WorkItem]:
    """The images and texts of a JSON-lines file ``{"image": "rel/path.jpg", "texts": [...]}``
    (lines naming the same image are merged, sorted by image). An image outside ``root``
    (absolute, or ``..`` above it) becomes an error row naming its line unless ``allow_outside``;
    an image with an empty ``texts`` list, an error row.

    Raises:
        InputError: no such file, not UTF-8, a line that is not such an object, or no pairs.
    """
    p = Path(pairs)
    if not p.is_file():
        raise InputError(f"--pairs must be a JSON-lines file, got {pairs}")
    merged: dict = {}
    problems: dict = {}
    for n, line in enumerate(read_utf8(p, "--pairs").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image, texts = rec["image"], rec["texts"]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{pairs}:{n}: expected {{\"image\": \"rel/path.jpg\", \"texts\": [...]}}, "
                           f"got {line[:80]!r}") from None
        if (not isinstance(image, str) or not image or not isinstance(texts, list)
                or not all(isinstance(t, str) for t in texts)):
            raise InputError(f"{pairs}:{n}: \"image\" must be a non-empty string and \"texts\" a list of strings, "
                           f"got {line[:80]!r}")
        key, problem = _inside(image, root, allow_outside, f"{pairs}:{n}")
        merged.setdefault(key, []).extend(texts)
        if problem:
            problems.setdefault(key, problem)
    if not merged:
        raise InputError(f"no pairs in {pairs}")
    if not root.is_dir():
        raise InputError(f"--images must be the folder the pairs' paths are relative to, got {root}")
    return [WorkItem(k, tuple(dict.fromkeys(v)), problems.get(k)) for k, v in sorted(merged.items())]


def class_items(root: Path, template: str) -> List[WorkItem]:
    """An ImageNet-style tree ``root/CLASS/*.jpg``: every image against every class's prompt
    ``template.format(CLASS with '_' as ' ')``, classes in sorted folder order.

    Raises:
        InputError: a template without exactly one plain ``{}``, or no class folder with images.
    """
    check_template(template)
    files = [f for f in scan_images(root) if "/" in f]
    classes = sorted({f.split("/", 1)[0] for f in files})
    if not classes:
        raise InputError(f"no class folders with images under {root} (expected ROOT/CLASS/IMAGE)")
    texts = tuple(template.format(storable_key(c)[0].replace("_", " ")) for c in classes)
    return [_folder_item(f, texts) for f in files]


def check_template(template: str, flag: str = "--class-prompts") -> None:
    """Check a prompt template before any work: exactly one plain ``{}`` (no name, index, format
    spec or conversion) and otherwise only doubled braces, so that ``template.format(name)``
    cannot fail (``'a {} and a {}'``: ``IndexError``; ``'{x} {}'``: ``KeyError``); ``flag`` names it
    in the message (``"--templates"``).

    Raises:
        InputError: any other template, with the fix.
    """
    import string

    if not isinstance(template, str):
        raise InputError(f"{flag} must be a string with one {{}}, got {type(template).__name__}")
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise InputError(f"{flag} {template!r} is not a valid template ({e}); write {{{{ and }}}} for "
                         "literal braces") from None
    if fields != [("", "", None)]:
        raise InputError(f"{flag} must contain {{}} for the class name, once and plain (no name, index or "
                         f"format spec; {{{{ }}}} for literal braces), got {template!r}")


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
            InputError: the file is missing, unreadable or truncated (the engine makes it an error row)."""
        from .._io import open_image

        item = self.items[i]
        if item.problem:
            raise InputError(item.problem)
        return Example(item.image, self.to_pixels([open_image(str(self.root / item.image))])[0], item.texts)


def key_of(dataset: Any, i: int) -> Optional[str]:
    """The key of item ``i`` without decoding it, where the dataset can tell (for error rows)."""
    items = getattr(dataset, "items", None)
    return items[i].image if items is not None else None
