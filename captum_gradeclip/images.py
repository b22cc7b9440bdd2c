"""Image helpers shared by the applications (``segment``, the authors' benchmark protocol): PIL
images to ``(3, H, W)`` uint8 tensors and back, the authors' 640 px cap, and the maps' inputs
made from uint8 images (:class:`MapInput`: at the image's own resolution, or the model's).
PIL and numpy are imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

#: The Grad-ECLIP authors' cap on the shorter side of an image.
MAX_SIDE = 640


def shrink(image: Any, max_side: int = MAX_SIDE) -> Any:
    """A PIL image whose shorter side exceeds ``max_side``, resized so that it is ``max_side``
    (the authors' ``int(side / scale)`` sizes, PIL's bicubic); others unchanged."""
    w, h = image.size
    if min(w, h) <= max_side:
        return image
    scale = min(w, h) / max_side
    return image.resize((int(w / scale), int(h / scale)), resample=3)  # 3 = BICUBIC


def to_uint8(image: Any) -> Tensor:
    """A PIL RGB image -> ``(3, H, W)`` uint8."""
    import numpy as np

    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_pil(pixels: Tensor) -> Any:
    """``(3, H, W)`` uint8 -> a PIL RGB image."""
    from PIL import Image

    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def mean_std(clip: Any) -> Tuple[Tensor, Tensor]:
    """The model's pixel normalisation ``(3,)`` mean and std, read off its own preprocessing of a
    black and a white image."""
    from PIL import Image

    lo, hi = clip.pixels([Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (255, 255, 255))])
    lo, hi = lo[:, 32, 32], hi[:, 32, 32]
    std = 1.0 / (hi - lo)
    return -lo * std, std


@dataclass(frozen=True)
class MapInput:
    """How the maps' inputs are made from ``(N, 3, H, W)`` uint8 images: ``native`` (the image
    resized to multiples of ``patch``, bicubic, the authors' ``imgprocess_keepsize``) or a fixed
    ``size`` (the whole image squashed to the model's square input). Returns ``(N, 3, H', W')``
    normalised pixels."""

    mean: Tensor
    std: Tensor
    patch: int
    size: Optional[int] = None

    def __call__(self, images: Tensor) -> Tensor:
        import numpy as np

        h, w = images.shape[-2:]
        if self.size:
            nh = nw = self.size
        else:
            nh, nw = (max(1, int(v / self.patch + 0.5)) * self.patch for v in (h, w))
        out = [torch.from_numpy(np.array(to_pil(x).resize((nw, nh), resample=3), dtype=np.float32)) for x in images]
        x = torch.stack(out).permute(0, 3, 1, 2) / 255.0
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def map_input_for(clip: Any, kind: str) -> MapInput:
    """The :class:`MapInput` of ``kind`` (``"native"`` or ``"model"``) for a loaded CLIP."""
    from PIL import Image

    mean, std = mean_std(clip)
    size = None if kind == "native" else int(clip.pixels([Image.new("RGB", (97, 97))]).shape[-1])
    return MapInput(mean, std, int(clip.patch_size), size)
