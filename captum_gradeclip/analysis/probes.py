"""Probe files for ``analyze attributes``: a user's own probes (e.g. COCO boxes), one JSON object a line:

    {"image": "img/1.jpg", "prompt": "a dog", "category": "object", "box": [x0, y0, x1, y1]}
    {"image": "img/1.jpg", "prompt": "a red car", "category": "colour+shape", "mask": "masks/1_car.png",
     "distractor": "a blue car"}
    {"image": "img/1.jpg", "prompt": "a giraffe", "category": "absent", "distractor": "a dog"}

``image`` and ``mask`` paths are relative to the file's folder (or ``--images``); a mask is a PNG
of the image's size (non-zero = the region); a box is in the image's pixels (``x1``, ``y1``
exclusive). ``category`` is one of :data:`~.attributes.CATEGORIES`; every category but
``absent`` needs a ``mask`` or a ``box``. ``distractor`` (optional) is the false prompt the true
one should beat (for ``absent``: a prompt that *is* in the image). ``"texts": [prompt]`` is read
as ``prompt``, so an ``explain-dataset`` pairs file with one text per line is a probe file.
A ``binding`` probe from a file is scored like any other (verdict, pointing on its target); the
energy shares on the colour- and shape-matching objects need the generated ShapesCLIP suite.

Structural problems (not JSON, a field missing or of the wrong type, an unknown category) stop
the command with one line naming file and line; problems of the data (an unreadable image or
mask, a mask whose size is not the image's, a box outside it, a region outside the model's
centre crop) become an error row of that probe, counted in the summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .._io import read_utf8
from ..errors import InputError
from .attributes import CATEGORIES, Probe, ProbeRow, SceneProbes, to_input_geometry

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["ProbeDataError", "ProbeLine", "iter_probes", "job_pairs", "load_probes", "read_probes", "region"]


class ProbeDataError(ValueError):
    """A probe whose image, mask or box cannot be used (becomes an error row)."""


@dataclass(frozen=True)
class ProbeLine:
    """One line of a probe file (paths resolved against the root folder)."""

    image: str
    path: Path
    prompt: str
    category: str
    distractor: Optional[str]
    mask: Optional[Path]
    box: Optional[Tuple[float, float, float, float]]
    line: int
    source: str

    @property
    def probe_id(self) -> str:
        return f"{Path(self.source).name}:{self.line}"


def _field(rec: dict, where: str) -> Tuple[str, str, Optional[str]]:
    """``(prompt, category, distractor)`` of a line, checked."""
    prompt = rec.get("prompt")
    if prompt is None and isinstance(rec.get("texts"), list) and len(rec["texts"]) == 1:
        prompt = rec["texts"][0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where}: a probe needs \"prompt\": a non-empty string (or \"texts\" holding one)")
    cat = rec.get("category")
    if not isinstance(cat, str):
        raise InputError(f"{where}: a probe needs \"category\": one of {', '.join(CATEGORIES)}")
    if cat not in CATEGORIES:
        hint = " (spelt \"colour\" here)" if cat.startswith("color") else ""
        raise InputError(f"{where}: unknown category {cat!r}{hint}; use one of {', '.join(CATEGORIES)}")
    dis = rec.get("distractor")
    if dis is not None and (not isinstance(dis, str) or not dis.strip()):
        raise InputError(f"{where}: \"distractor\" must be a non-empty string")
    return prompt, cat, dis


def _region_fields(rec: dict, cat: str, base: Path, where: str) -> Tuple[Optional[Path], Optional[tuple]]:
    mask, box = rec.get("mask"), rec.get("box")
    if mask is not None and box is not None:
        raise InputError(f"{where}: give a \"mask\" or a \"box\", not both")
    if mask is None and box is None and cat != "absent":
        raise InputError(f"{where}: a {cat!r} probe needs a \"mask\" (PNG path) or a \"box\" [x0, y0, x1, y1]")
    if mask is not None and not isinstance(mask, str):
        raise InputError(f"{where}: \"mask\" must be a path to a PNG, got {mask!r}")
    if box is not None:
        ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
        if not ok or box[2] <= box[0] or box[3] <= box[1]:
            raise InputError(f"{where}: \"box\" must be [x0, y0, x1, y1] pixels with x1 > x0 and y1 > y0, got {box!r}")
        box = tuple(float(v) for v in box)
    return (base / mask if mask is not None else None), box


def read_probes(path: Union[str, Path], root: Optional[Union[str, Path]] = None) -> List[ProbeLine]:
    """The probes of a probe file, in file order (blank lines skipped).

    Raises:
        InputError: no such file, or a line that is not a probe (one line naming file and line).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--pairs must be a JSON-lines probe file, got {path}")
    base = Path(root) if root is not None else p.parent
    out: List[ProbeLine] = []
    for n, line in enumerate(read_utf8(p, "--pairs").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except ValueError:
            raise InputError(f"{where}: not JSON: {line[:80]!r}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
            raise InputError(f"{where}: a probe needs \"image\": a path (relative to {base})")
        prompt, cat, dis = _field(rec, where)
        mask, box = _region_fields(rec, cat, base, where)
        out.append(ProbeLine(rec["image"], base / rec["image"], prompt, cat, dis, mask, box, n, str(path)))
    if not out:
        raise InputError(f"no probes in {path}")
    return out


def region(line: ProbeLine, image_size: Tuple[int, int]) -> Optional[Tensor]:
    """A probe's region in the original image: ``(H0, W0)`` bool (``image_size`` is PIL's
    ``(W0, H0)``), or ``None`` for none.

    Raises:
        ProbeDataError: an unreadable mask, a mask of another size, a box outside the image, an
            empty region.
    """
    w0, h0 = image_size
    if line.mask is not None:
        m = _read_mask(line.mask)
        if tuple(m.shape) != (h0, w0):
            raise ProbeDataError(f"mask {line.mask} is {m.shape[1]}x{m.shape[0]} but image {line.image} is "
                                 f"{w0}x{h0}: a mask must have its image's size")
    elif line.box is not None:
        x0, y0, x1, y1 = line.box
        if x0 < 0 or y0 < 0 or x1 > w0 or y1 > h0:
            raise ProbeDataError(f"box {list(line.box)} lies outside image {line.image} ({w0}x{h0})")
        ys = (torch.arange(h0) + 0.5)[:, None]
        xs = (torch.arange(w0) + 0.5)[None]
        m = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    else:
        return None
    if not bool(m.any()):
        raise ProbeDataError(f"the region of probe {line.probe_id} is empty")
    return m


def _read_mask(path: Path) -> Tensor:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ProbeDataError(f"cannot read mask {path}: {type(e).__name__}") from None
    return torch.from_numpy(a > 0)


def _error_row(line: ProbeLine, message: str) -> ProbeRow:
    return ProbeRow(line.probe_id, line.image, line.category, line.prompt, line.distractor, error=message)


def iter_probes(lines: List[ProbeLine], pixels: Callable[["Image.Image"], Tensor],
                open_image: Callable[[str], "Image.Image"], errors: List[ProbeRow]) -> Iterator[SceneProbes]:
    """Probe lines -> one :class:`SceneProbes` per image, opened only when it is reached (images
    in order of first appearance), its probes' regions moved to the model input's geometry by
    :func:`~.attributes.to_input_geometry`. Every probe that cannot be used (an unreadable image,
    a bad mask or box, a region outside the crop) is appended to ``errors`` as an error row.

    Args:
        pixels: PIL image -> the model input ``(3, H, W)``.
        open_image: path -> PIL image; raises on an unreadable file.
        errors: the list the error rows go to.
    """
    by_image: Dict[str, List[ProbeLine]] = {}
    for ln in lines:
        by_image.setdefault(str(ln.path), []).append(ln)
    for path, group in by_image.items():
        try:
            im = open_image(path)
        except (InputError, OSError, ValueError) as e:  # each probe's row says why
            why = f"cannot read image {group[0].image}: {' '.join(str(e).split())}"
            errors.extend(_error_row(ln, why) for ln in group)
            continue
        sc = SceneProbes(Path(group[0].image).as_posix(), pixels(im), [], im)
        for ln in group:
            try:
                sc.probes.append(_probe(ln, sc))
            except ProbeDataError as e:
                errors.append(_error_row(ln, str(e)))
        if sc.probes:
            yield sc


def _probe(ln: ProbeLine, sc: SceneProbes) -> Probe:
    """The probe of a line on its opened image (raises :class:`ProbeDataError`)."""
    m = region(ln, sc.image.size)
    target = None if m is None else to_input_geometry(m, tuple(sc.pixels.shape[-2:]))
    if target is not None and not bool(target.any()):
        raise ProbeDataError(f"the region of probe {ln.probe_id} lies outside the model's centre crop")
    return Probe(ln.probe_id, ln.image, ln.category, ln.prompt, ln.distractor, target)


def load_probes(lines: List[ProbeLine], pixels: Callable[["Image.Image"], Tensor],
                open_image: Callable[[str], "Image.Image"]) -> Tuple[List[SceneProbes], List[ProbeRow]]:
    """:func:`iter_probes` as a list: ``(scenes, error rows)``, every image held in memory."""
    errors: List[ProbeRow] = []
    return list(iter_probes(lines, pixels, open_image, errors)), errors


def job_pairs(lines: List[ProbeLine]) -> List[Dict[str, object]]:
    """The ``explain-dataset --pairs`` lines that hold every text the probes need (prompt and
    distractor per image), so that ``--maps JOB`` can read them: ``[{"image", "texts"}]``."""
    texts: Dict[str, List[str]] = {}
    for ln in lines:
        texts.setdefault(Path(ln.image).as_posix(), []).extend([ln.prompt] + ([ln.distractor] if ln.distractor else []))
    return [{"image": k, "texts": list(dict.fromkeys(v))} for k, v in texts.items()]
