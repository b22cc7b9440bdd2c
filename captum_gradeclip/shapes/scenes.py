"""Synthetic grounded scenes: coloured shapes on textured backgrounds, with exact masks.

Every scene is a pure function of its arguments (and ``seed``): the same call gives the same
pixels and masks on any machine, because all randomness comes from a private
:class:`random.Random` and all drawing is done by PIL on integer coordinates.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch

COLOURS: dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 230),
    "yellow": (235, 220, 30),
    "purple": (150, 40, 190),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "cyan": (30, 220, 225),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "bar")
COLOUR_NAMES: Tuple[str, ...] = tuple(COLOURS)

#: Supersampling factor used when drawing (anti-aliased edges, sub-pixel accurate masks).
_SS = 4


@dataclass(frozen=True)
class ShapeSpec:
    """One object of a scene.

    Args:
        colour: one of :data:`COLOUR_NAMES`.
        shape: one of :data:`SHAPES`.
        center: ``(x, y)`` as fractions of the image side, in ``[0, 1]``.
        size: the object's bounding-square side as a fraction of the image side.
    """

    colour: str
    shape: str
    center: Tuple[float, float] = (0.5, 0.5)
    size: float = 0.3

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {COLOUR_NAMES}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if not 0.02 <= self.size <= 1.0:
            raise ValueError(f"size must be in [0.02, 1] (a fraction of the side), got {self.size}")

    @property
    def prompt(self) -> str:
        """The object's caption, e.g. ``"a red circle"``."""
        return f"{article(self.colour)} {self.colour} {self.shape}"


@dataclass
class Scene:
    """A rendered scene.

    Attributes:
        image: the RGB image, ``size x size`` pixels.
        objects: the objects, in drawing order (later ones occlude earlier ones).
        masks: ``(K, H, W)`` bool tensor, the *visible* pixels of each object.
        boxes: ``(K, 4)`` float tensor, ``(x0, y0, x1, y1)`` pixel box of each visible mask.
    """

    image: "PIL.Image.Image"  # noqa: F821
    objects: list[ShapeSpec]
    masks: torch.Tensor
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4))

    @property
    def prompts(self) -> list[str]:
        """One caption per object: ``["a red circle", "a blue square", ...]``."""
        return [o.prompt for o in self.objects]

    def caption(self, indices: Optional[Sequence[int]] = None) -> str:
        """A compositional caption, e.g. ``"a red circle and a blue square"``.

        Args:
            indices: which objects to name, in order (default: all).
        """
        idx = range(len(self.objects)) if indices is None else indices
        return " and ".join(self.objects[i].prompt for i in idx)


def all_prompts() -> list[str]:
    """The ``len(COLOURS) * len(SHAPES)`` single-object prompts, colour-major."""
    return [f"{article(c)} {c} {s}" for c in COLOUR_NAMES for s in SHAPES]


def article(word: str) -> str:
    """``"an"`` before a vowel, else ``"a"``."""
    return "an" if word[0] in "aeiou" else "a"


def _polygon(shape: str, cx: float, cy: float, r: float) -> list:
    """Drawing primitives for one shape, as (kind, coords, extra) tuples."""
    if shape == "circle":
        return [("ellipse", [cx - r, cy - r, cx + r, cy + r], None)]
    if shape == "ring":
        return [("ring", [cx - r, cy - r, cx + r, cy + r], max(2.0, 0.38 * r))]
    if shape == "square":
        s = 0.85 * r
        return [("rect", [cx - s, cy - s, cx + s, cy + s], None)]
    if shape == "triangle":
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a))
               for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        shift = 0.25 * r  # centre the triangle's box on (cx, cy)
        return [("poly", [(x, y + shift) for x, y in pts], None)]
    if shape == "cross":
        w = 0.33 * r
        return [("rect", [cx - r, cy - w, cx + r, cy + w], None),
                ("rect", [cx - w, cy - r, cx + w, cy + r], None)]
    if shape == "bar":
        return [("rect", [cx - r, cy - 0.3 * r, cx + r, cy + 0.3 * r], None)]
    raise ValueError(shape)


def _draw(draw, prims: list, fill) -> None:
    for kind, xy, extra in prims:
        if kind == "ellipse":
            draw.ellipse(xy, fill=fill)
        elif kind == "ring":
            draw.ellipse(xy, outline=fill, width=int(round(extra)))
        elif kind == "rect":
            draw.rectangle(xy, fill=fill)
        else:
            draw.polygon(xy, fill=fill)


def _background(rng: random.Random, size: int, kind: str):
    from PIL import Image, ImageFilter

    grey = rng.randint(25, 100)
    base = [grey + rng.randint(-20, 20) for _ in range(3)]
    amp = rng.randint(10, 40)
    g = torch.Generator().manual_seed(rng.getrandbits(62))
    noise = torch.rand(size, size, 3, generator=g) * 2 - 1
    img = torch.tensor(base, dtype=torch.float32) + amp * noise
    if kind == "textured":
        # low-frequency stripes in a random direction
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(0.1, 0.35) * size
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        phase = (xx * math.cos(ang) + yy * math.sin(ang)) * (2 * math.pi / period)
        img = img + rng.randint(10, 30) * torch.sin(phase)[..., None]
    elif kind != "noise":
        raise ValueError(f"background must be 'noise' or 'textured', got {kind!r}")
    arr = img.clamp(0, 255).to(torch.uint8).numpy()
    out = Image.fromarray(arr, "RGB")
    return out.filter(ImageFilter.GaussianBlur(0.6)) if kind == "noise" else out


def _sample_objects(rng: random.Random, n: int) -> list[ShapeSpec]:
    pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    chosen = rng.sample(pairs, n)
    objs: list[ShapeSpec] = []
    boxes: list[Tuple[float, float, float, float]] = []
    for colour, shape in chosen:
        for _ in range(100):
            size = rng.uniform(0.22, 0.4)
            h = size / 2
            cx, cy = rng.uniform(h, 1 - h), rng.uniform(h, 1 - h)
            box = (cx - h, cy - h, cx + h, cy + h)
            if all(_overlap(box, b) < 0.05 for b in boxes):
                break
        boxes.append(box)
        objs.append(ShapeSpec(colour, shape, (cx, cy), size))
    return objs


def _overlap(a, b) -> float:
    """Intersection area over the smaller box's area."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / small


def _visible_masks(full_masks: list, size: int) -> torch.Tensor:
    """``K`` drawn ``L``-mode masks, first drawn at the bottom -> ``(K, size, size)`` bool of
    what stays visible under the objects drawn after it."""
    masks = torch.zeros(len(full_masks), size, size, dtype=torch.bool)
    occluder = torch.zeros(size, size, dtype=torch.bool)
    for i in range(len(full_masks) - 1, -1, -1):
        m = torch.frombuffer(bytearray(full_masks[i].tobytes()), dtype=torch.uint8)
        m = m.view(size, size) >= 128
        masks[i] = m & ~occluder
        occluder |= m
    return masks


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(K, H, W)`` bool -> ``(K, 4)`` ``x0, y0, x1, y1`` boxes (zeros for an empty mask)."""
    boxes = torch.zeros(len(masks), 4)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(xs):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float)
    return boxes


def render_scene(
    objects: Optional[Sequence[ShapeSpec]] = None,
    *,
    seed: Optional[int] = None,
    size: int = 64,
    background: str = "random",
    n_objects: Optional[int] = None,
) -> Scene:
    """Render a scene with 1 to 4 coloured shapes and their exact visible masks.

    Args:
        objects: the objects to draw, in order. Default: ``n_objects`` (or 1 to 4) distinct
            colour–shape pairs sampled from ``seed``, placed with little overlap.
        seed: seeds everything random (objects, background). ``None`` means seed 0.
        size: image side in pixels.
        background: ``"noise"``, ``"textured"`` or ``"random"`` (either, from ``seed``).
        n_objects: how many objects to sample when ``objects`` is not given, 1 to 4.

    Returns:
        A :class:`Scene`; ``scene.masks`` is ``(K, size, size)`` bool, ``scene.boxes`` ``(K, 4)``.

    Raises:
        ValueError: for an unknown background, a bad ``n_objects`` or ``size``.
    """
    from PIL import Image, ImageDraw

    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    rng = random.Random(0 if seed is None else seed)
    if objects is None:
        n = rng.randint(1, 4) if n_objects is None else n_objects
        if not 1 <= n <= 4:
            raise ValueError(f"n_objects must be between 1 and 4, got {n}")
        objects = _sample_objects(rng, n)
    objects = list(objects)
    kind = rng.choice(["noise", "textured"]) if background == "random" else background
    big = size * _SS
    image = _background(rng, size, kind).resize((big, big), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    full_masks = []
    for obj in objects:
        jitter = tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLOURS[obj.colour])
        prims = _polygon(obj.shape, obj.center[0] * big, obj.center[1] * big, obj.size * big / 2)
        _draw(draw, prims, jitter)
        m = Image.new("L", (big, big), 0)
        _draw(ImageDraw.Draw(m), prims, 255)
        full_masks.append(m.resize((size, size), Image.BOX))
    image = image.resize((size, size), Image.BOX)
    masks = _visible_masks(full_masks, size)
    return Scene(image=image, objects=objects, masks=masks, boxes=_boxes(masks))
