"""MS-COCO as the analyses take it, from the files users have: ``captions_val2017.json`` and
``instances_val2017.json`` (the standard layout: ``images [{id, file_name, width, height}]``,
``annotations [{image_id, caption}]`` or ``[{image_id, category_id, bbox, segmentation, iscrowd}]``,
``categories [{id, name}]``), read with :mod:`json` (``pycocotools`` is needed only for compressed
RLE masks, and only if some are used).

- :func:`read_captions`: one (image, caption) per annotation, for ``analyze concreteness`` and
  ``analyze decomposition`` (whose phrases the package's miner finds, :mod:`~captum_gradeclip.finetune.phrases`);
- :func:`read_instances` and :func:`instance_probes`: ``analyze attributes``'s probes generated from
  the instance annotations (see :func:`instance_probes` for the rules), and
  :func:`phrase_masks`: decomposition's phrase masks where a phrase names an annotated category.

Every annotation ends as a pair or probe, or as an error (an image id no image has, an empty
caption, a segmentation that cannot be read): nothing is skipped silently.

Dimension letters: H0, W0 the image's pixels as the JSON gives them; H, W the model input's.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["CocoCaption", "CocoImage", "CocoInstances", "CocoObject", "LARGE", "MIN_AREA", "SMALL", "SYNONYMS",
           "instance_probes", "instance_scenes", "object_mask", "phrase_masks", "read_captions", "read_instances"]

#: An object smaller than this share of its image (box area) is not probed (still counted).
MIN_AREA = 0.01
#: Box area shares for the size probes: at least LARGE is "a large ...", at most SMALL "a small ...".
LARGE, SMALL = 0.25, 0.05
#: The categories probed per image at most (the largest by area).
MAX_CATEGORIES = 3
#: Counts the count probes use ("one" .. "four"); an image's true count outside them is not probed.
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
#: Caption words that name a COCO category under another name (for decomposition's phrase masks).
SYNONYMS = {"man": "person", "men": "person", "woman": "person", "women": "person", "people": "person",
            "boy": "person", "girl": "person", "child": "person", "children": "person", "kid": "person",
            "guy": "person", "lady": "person", "player": "person", "skier": "person", "surfer": "person",
            "skateboarder": "person", "rider": "person", "bike": "bicycle", "plane": "airplane", "jet": "airplane",
            "sofa": "couch", "television": "tv", "phone": "cell phone", "doughnut": "donut", "fridge": "refrigerator",
            "motorbike": "motorcycle", "puppy": "dog", "kitten": "cat", "table": "dining table", "ball": "sports ball"}


@dataclass(frozen=True)
class CocoImage:
    """An entry of ``images``: ``id``, ``file_name`` (relative to ``--images``), ``width``, ``height``."""

    id: int
    file_name: str
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class CocoCaption:
    """One caption annotation: its image's ``file_name`` (the row key), ``caption``, ``image_id``, ``ann_id``."""

    image: str
    caption: str
    image_id: int
    ann_id: int


@dataclass(frozen=True)
class CocoObject:
    """One instance annotation: ``category`` name, ``bbox`` ``[x, y, w, h]`` pixels, ``segmentation``
    (polygons, RLE or ``None``), ``iscrowd``, ``ann_id``."""

    category: str
    bbox: Tuple[float, float, float, float]
    segmentation: Any = None
    iscrowd: bool = False
    ann_id: int = 0


@dataclass
class CocoInstances:
    """An instances file: ``images`` by id, ``objects`` by image id, ``categories`` (names, in id
    order) and ``errors`` (``{"image", "error"}`` for annotations that cannot be used)."""

    images: Dict[int, CocoImage]
    objects: Dict[int, List[CocoObject]]
    categories: List[str]
    errors: List[Dict[str, str]] = field(default_factory=list)


def _load(path: Union[str, Path], flag: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{flag} must be a COCO annotation file (JSON), got {path}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON file ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        raise InputError(f"{path}: a COCO file needs \"images\": [...] and \"annotations\": [...] (as "
                         f"{'captions' if 'caption' in flag else 'instances'}_val2017.json has)")
    return data


def _images(data: Dict[str, Any], path: Union[str, Path]) -> Dict[int, CocoImage]:
    out: Dict[int, CocoImage] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise InputError(f"{path}: images[{i}] needs \"id\" (an integer) and \"file_name\" (a string), got "
                             f"{str(im)[:80]}")
        out[im["id"]] = CocoImage(im["id"], Path(im["file_name"]).as_posix(), int(im.get("width") or 0),
                                  int(im.get("height") or 0))
    return out


def read_captions(path: Union[str, Path]) -> Tuple[List[CocoCaption], List[Dict[str, str]]]:
    """The captions of a COCO captions file, in annotation order, and the annotations that cannot
    be used (``{"image", "text", "error"}``: an image id that no image has, an empty caption).

    Raises:
        InputError: no such file, not JSON, not the COCO layout, or an annotation that is not an
            object with ``image_id``.
    """
    data = _load(path, "--coco-captions")
    images = _images(data, path)
    out, errors = [], []
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or "image_id" not in a:
            raise InputError(f"{path}: annotations[{i}] needs \"image_id\" and \"caption\", got {str(a)[:80]}")
        cap, im = a.get("caption"), images.get(a["image_id"])
        if im is None:
            errors.append({"image": str(a["image_id"]), "text": str(cap), "error": f"annotations[{i}]: image_id "
                           f"{a['image_id']} is not in \"images\""})
        elif not isinstance(cap, str) or not cap.strip():
            errors.append({"image": im.file_name, "text": str(cap), "error": f"annotations[{i}]: an empty caption"})
        else:
            out.append(CocoCaption(im.file_name, " ".join(cap.split()), im.id, int(a.get("id", i))))
    return out, errors


def read_instances(path: Union[str, Path]) -> CocoInstances:
    """The instance annotations of a COCO instances file, by image.

    Raises:
        InputError: no such file, not JSON, not the COCO layout, or no ``categories``.
    """
    data = _load(path, "--coco-instances")
    images = _images(data, path)
    cats = {c["id"]: str(c["name"]) for c in data.get("categories") or [] if isinstance(c, dict) and "id" in c}
    if not cats:
        raise InputError(f"{path}: an instances file needs \"categories\": [{{\"id\", \"name\"}}, ...]")
    inst = CocoInstances(images, {i: [] for i in images}, [cats[k] for k in sorted(cats)])
    for i, a in enumerate(data["annotations"]):
        ok = isinstance(a, dict) and a.get("image_id") in images and a.get("category_id") in cats
        box = a.get("bbox") if isinstance(a, dict) else None
        if not ok or not (isinstance(box, list) and len(box) == 4 and box[2] > 0 and box[3] > 0):
            inst.errors.append({"image": str(a.get("image_id") if isinstance(a, dict) else "?"),
                                "error": f"annotations[{i}]: needs a known image_id and category_id and a bbox "
                                         "[x, y, w, h] with w, h > 0"})
            continue
        inst.objects[a["image_id"]].append(CocoObject(cats[a["category_id"]], tuple(float(v) for v in box),
                                                      a.get("segmentation"), bool(a.get("iscrowd")), int(a.get("id", i))))
    return inst


# ---- masks ----------------------------------------------------------------------------------
def _polygons(polys: Sequence[Sequence[float]], h: int, w: int) -> Tensor:
    import numpy as np
    from PIL import Image, ImageDraw

    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    for poly in polys:
        if len(poly) >= 6:
            draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1, outline=1)
    return torch.from_numpy(np.asarray(im) > 0)


def _rle(seg: Dict[str, Any], h: int, w: int) -> Tensor:
    """An RLE mask: uncompressed (``counts`` a list) decoded here, column-major as COCO writes
    it; compressed (``counts`` a string) through pycocotools."""
    counts = seg["counts"]
    if isinstance(counts, list):
        flat = torch.zeros(h * w, dtype=torch.bool)
        at, val = 0, False
        for c in counts:
            if val:
                flat[at:at + int(c)] = True
            at, val = at + int(c), not val
        return flat.reshape(w, h).T
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise InputError("a compressed RLE segmentation needs pycocotools: pip install pycocotools") from None
    import numpy as np

    rle = {"size": seg.get("size", [h, w]), "counts": counts.encode() if isinstance(counts, str) else counts}
    return torch.from_numpy(np.asarray(mask_utils.decode(rle)) > 0)


def object_mask(obj: CocoObject, height: int, width: int) -> Tensor:
    """An object's region ``(H0, W0)`` bool: its segmentation (polygons drawn with PIL, or RLE),
    else its box (pixel centres inside ``[x, x + w) x [y, y + h)``).

    Raises:
        InputError: a segmentation of another layout, or compressed RLE without pycocotools.
    """
    seg = obj.segmentation
    if isinstance(seg, list) and seg:
        return _polygons(seg, height, width)
    if isinstance(seg, dict) and "counts" in seg:
        return _rle(seg, height, width)
    if seg not in (None, []):
        raise InputError(f"annotation {obj.ann_id}: a segmentation must be polygons or RLE, got {str(seg)[:60]}")
    x, y, bw, bh = obj.bbox
    ys, xs = (torch.arange(height) + 0.5)[:, None], (torch.arange(width) + 0.5)[None]
    return (xs >= x) & (xs < x + bw) & (ys >= y) & (ys < y + bh)


# ---- probes ---------------------------------------------------------------------------------
def _a(name: str) -> str:
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _plural(name: str) -> str:
    from ..finetune.phrases import plural

    return plural(name)


def _count(name: str, k: int) -> str:
    """``"one dog"``, ``"two dogs"``."""
    return f"one {name}" if k == 1 else f"{NUMBERS[k]} {_plural(name)}"


@dataclass(frozen=True)
class ProbeSpec:
    """A probe before its image is opened: ``probe_id``, ``category``, ``prompt``, ``distractor``
    and the objects (indices into the image's objects) whose union is the target (empty: none)."""

    probe_id: str
    category: str
    prompt: str
    distractor: Optional[str]
    objects: Tuple[int, ...]


def _centre_x(o: CocoObject, width: int) -> float:
    return (o.bbox[0] + o.bbox[2] / 2) / width


def _single_probes(key: str, name: str, i: int, o: CocoObject, im: CocoImage) -> List[ProbeSpec]:
    """Size and position probes of a category with one instance in the image."""
    out = []
    share = o.bbox[2] * o.bbox[3] / (im.width * im.height)
    for word, other, hit in (("large", "small", share >= LARGE), ("small", "large", share <= SMALL)):
        if hit:
            out.append(ProbeSpec(f"{key}/size/{name}", "size", _a(f"{word} {name}"), _a(f"{other} {name}"), (i,)))
    cx = _centre_x(o, im.width)
    for side, other, hit in (("left", "right", cx < 1 / 3), ("right", "left", cx > 2 / 3)):
        if hit:
            out.append(ProbeSpec(f"{key}/position/{name}", "position", f"{_a(name)} on the {side}",
                                 f"{_a(name)} on the {other}", (i,)))
    return out


def _binding(key: str, singles: Dict[str, int], objs: List[CocoObject], im: CocoImage) -> List[ProbeSpec]:
    """Two single-instance categories on opposite sides: the true sides against the swapped ones."""
    left = [n for n, i in singles.items() if _centre_x(objs[i], im.width) < 1 / 3]
    right = [n for n, i in singles.items() if _centre_x(objs[i], im.width) > 2 / 3]
    if not left or not right:
        return []
    a, b = left[0], right[0]
    return [ProbeSpec(f"{key}/binding/{a}+{b}", "binding", f"{_a(a)} on the left and {_a(b)} on the right",
                      f"{_a(a)} on the right and {_a(b)} on the left", (singles[a], singles[b]))]


def instance_probes(im: CocoImage, objects: Sequence[CocoObject], categories: Sequence[str]) -> List[ProbeSpec]:
    """The probes of one image from its instance annotations (``random.Random(image id)`` picks
    the absent categories). Objects: not crowds, box at least :data:`MIN_AREA` of the image; of
    these, the :data:`MAX_CATEGORIES` categories with the largest area are probed:

    - **object**: ``"a dog"`` (target: every dog's mask) against an absent category ``"a giraffe"``;
    - **count**: the true number of the category's instances, ``"two dogs"``, against each wrong
      count of :data:`NUMBERS` (one probe each), when it has no crowd annotation and the true
      count is in :data:`NUMBERS`;
    - **size**: a category with one instance whose box covers at least :data:`LARGE` of the image,
      ``"a large dog"`` against ``"a small dog"`` (at most :data:`SMALL`: the reverse);
    - **position**: a category with one instance whose box centre is in the left third,
      ``"a dog on the left"`` against ``"a dog on the right"`` (right third: the reverse);
    - **binding**: two single-instance categories in the left and right thirds, ``"a dog on the
      left and a cat on the right"`` against the sides swapped (target: both);
    - **two objects**: ``"a dog and a cat"`` against ``"a dog and a giraffe"``;
    - **absent**: ``"a giraffe"`` against the largest category present (no target).
    """
    if im.width <= 0 or im.height <= 0:
        return []
    rng = random.Random(im.id)
    key = im.file_name
    crowd = {o.category for o in objects if o.iscrowd}
    usable = [i for i, o in enumerate(objects) if not o.iscrowd and o.bbox[2] * o.bbox[3] >= MIN_AREA * im.width * im.height]
    area: Dict[str, float] = {}
    for i in usable:
        area[objects[i].category] = area.get(objects[i].category, 0.0) + objects[i].bbox[2] * objects[i].bbox[3]
    names = sorted(area, key=lambda n: -area[n])[:MAX_CATEGORIES]
    absent = [c for c in categories if c not in {o.category for o in objects}]
    if not names or not absent:
        return []
    out: List[ProbeSpec] = []
    singles: Dict[str, int] = {}
    for n in names:
        members = tuple(i for i, o in enumerate(objects) if o.category == n and not o.iscrowd)
        out.append(ProbeSpec(f"{key}/object/{n}", "object", _a(n), _a(rng.choice(absent)), members))
        if n not in crowd and len(members) in NUMBERS:
            out += [ProbeSpec(f"{key}/count/{n}/{k}", "count", _count(n, len(members)), _count(n, k), members)
                    for k in NUMBERS if k != len(members)]
        if len(members) == 1 and n not in crowd:
            singles[n] = members[0]
            out += _single_probes(key, n, members[0], objects[members[0]], im)
    out += _binding(key, singles, list(objects), im)
    if len(names) >= 2:
        both = tuple(i for i, o in enumerate(objects) if o.category in names[:2] and not o.iscrowd)
        out.append(ProbeSpec(f"{key}/two/{names[0]}+{names[1]}", "two objects", f"{_a(names[0])} and {_a(names[1])}",
                             f"{_a(names[0])} and {_a(rng.choice(absent))}", both))
    out.append(ProbeSpec(f"{key}/absent", "absent", _a(rng.choice(absent)), _a(names[0]), ()))
    return out


def _region(spec: ProbeSpec, objects: Sequence[CocoObject], im: CocoImage) -> Optional[Tensor]:
    if not spec.objects:
        return None
    m = torch.zeros(im.height, im.width, dtype=torch.bool)
    for i in spec.objects:
        m |= object_mask(objects[i], im.height, im.width)
    return m


def _same_shape(im: CocoImage, size: Tuple[int, int]) -> bool:
    """Whether the opened image ``size`` (PIL's ``(W, H)``) is the JSON's, up to a uniform scale
    (the image reader may decode a huge image smaller)."""
    w, h = size
    return abs(w / im.width - h / im.height) <= 0.02 * max(w / im.width, h / im.height)


def instance_scenes(inst: CocoInstances, root: Union[str, Path], pixels: Callable[[Any], Tensor],
                    open_image: Callable[[str], Any], errors: List[Any], *,
                    limit: Optional[int] = None) -> Iterator[Any]:
    """The probes of every image of ``inst`` (:func:`instance_probes`) as
    :class:`~.attributes.SceneProbes`, one image opened at a time (in image id order, the first
    ``limit`` images with probes), the regions moved to the model input's geometry. A probe that
    cannot be used (an unreadable image, a size that is not the JSON's, a region outside the crop
    or a segmentation that cannot be read) is appended to ``errors`` as an error row.

    Args:
        pixels: PIL image -> ``(3, H, W)``. open_image: path -> PIL image (raises on a bad file).
    """
    from .attributes import Probe, ProbeRow, SceneProbes, to_input_geometry

    done = 0
    for image_id in sorted(inst.images):
        im, objs = inst.images[image_id], inst.objects.get(image_id, [])
        specs = instance_probes(im, objs, inst.categories)
        if not specs:
            continue
        if limit is not None and done >= limit:
            return
        done += 1
        err = lambda s, why: ProbeRow(s.probe_id, im.file_name, s.category, s.prompt, s.distractor, error=why)  # noqa: E731
        try:
            pil = open_image(str(Path(root) / im.file_name))
        except (InputError, OSError, ValueError) as e:
            errors.extend(err(s, f"cannot read image {im.file_name}: {' '.join(str(e).split())}") for s in specs)
            continue
        if not _same_shape(im, pil.size):
            errors.extend(err(s, f"image {im.file_name} is {pil.size[0]}x{pil.size[1]}, the annotations say "
                                 f"{im.width}x{im.height}") for s in specs)
            continue
        x = pixels(pil)
        sc = SceneProbes(im.file_name, x, [], pil)
        for s in specs:
            try:
                region = _region(s, objs, im)
            except InputError as e:
                errors.append(err(s, str(e)))
                continue
            target = None if region is None else to_input_geometry(region, tuple(x.shape[-2:]))
            if target is not None and not bool(target.any()):
                errors.append(err(s, f"the region of probe {s.probe_id} lies outside the model's centre crop"))
                continue
            sc.probes.append(Probe(s.probe_id, im.file_name, s.category, s.prompt, s.distractor, target))
        if sc.probes:
            yield sc


# ---- decomposition's phrase masks -----------------------------------------------------------
def _category_of(phrase: str, categories: Sequence[str]) -> Optional[str]:
    """The category a phrase names: its last words are a category's name or plural (or a synonym)."""
    from .words import caption_words

    words = [w for w, _, _ in caption_words(phrase)]
    for n in (2, 1):
        tail = " ".join(words[-n:]) if len(words) >= n else None
        for c in categories:
            if tail is not None and tail in (c, _plural(c)):
                return c
    return SYNONYMS.get(words[-1]) if words and SYNONYMS.get(words[-1]) in categories else None


def phrase_masks(phrases: Sequence[str], im: CocoImage, objects: Sequence[CocoObject],
                 categories: Sequence[str], size: Tuple[int, int]) -> Optional[Tensor]:
    """Each phrase's object ``(P, H, W)`` bool at the model input's ``size``: the union of the
    image's instances of the category the phrase names (:data:`SYNONYMS` included; crowds too),
    all-False for a phrase that names none or a category the image has no instance of; ``None``
    when no phrase has a mask (then decomposition reports no pointing or energy)."""
    from .attributes import to_input_geometry

    out = []
    for p in phrases:
        cat = _category_of(p, categories)
        m = torch.zeros(im.height, im.width, dtype=torch.bool)
        for o in objects:
            if o.category == cat:
                m |= object_mask(o, im.height, im.width)
        out.append(to_input_geometry(m, size) if m.any() else torch.zeros(size, dtype=torch.bool))
    masks = torch.stack(out) if out else None
    return masks if masks is not None and bool(masks.any()) else None
