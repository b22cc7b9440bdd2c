"""``segment`` as a dataset job (:mod:`captum_gradeclip.scale`'s engine: sharded over torchrun's
ranks, resumable): each image's maps for every prompt (one forward and one batched backward,
``attribute_all``), its label map written as an index PNG (``0`` background, ``k + 1`` prompt
``k``) with a colour overlay, and, with masks, its confusion matrix and foreground scores as a
row, so that the scores are summed over the shards in the work list's order on any number of
processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import InputError
from ..scale.protocols import BaseBatchExplainer
from .functional import segment


def read_mask(path: Path) -> Tensor:
    """An index PNG (VOC's palette ``P`` mode, or grey ``L`` / ``I``) -> ``(H, W)`` int64 labels.

    Raises:
        InputError: no such file, not an image, more pixels than
            :data:`~captum_gradeclip._io.MAX_PIXELS`, or an RGB mask (colours are not labels: save the
            indices, e.g. VOC's ``SegmentationClass`` PNGs are palette images and work as they are).
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from .._io import image_size

    if not path.is_file():
        raise InputError(f"no mask {path}: --masks must hold one PNG per image, at the image's relative path")
    image_size(path, name=f"mask {path}")  # its header: a mask over the pixel limit is refused undecoded
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise InputError(f"mask {path} is a {im.mode} image: give index PNGs (palette or grey), not colours")
            return torch.from_numpy(np.array(im).astype(np.int64))
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read mask {path} ({type(e).__name__})") from None


@dataclass(frozen=True)
class SegmentOptions:
    """What the job does: ``prompts`` (``K``), ``background`` prompts, the ``threshold`` and
    ``normalise`` of :func:`~.functional.segment`, ``masks`` (a folder, or ``None``),
    ``ignore_index``, where to write (``out``), and ``names``: each key's PNG name under
    ``out/labels`` and ``out/overlays`` (:func:`~captum_gradeclip._io.safe_names` of the job's keys;
    ``None``: :func:`~captum_gradeclip._io.safe_relative_name` of each key)."""

    prompts: Tuple[str, ...]
    background: Tuple[str, ...]
    threshold: Optional[float]
    normalise: str
    out: Path
    masks: Optional[Path] = None
    ignore_index: int = 255
    names: Optional[Mapping[str, str]] = None

    def name(self, key: str) -> str:
        """The relative PNG name of ``key``'s label map and overlay (never a path outside ``out``)."""
        from .._io import safe_relative_name

        return (self.names or {}).get(key) or safe_relative_name(key, ".png")


def palette(k: int) -> List[int]:
    """A flat 256-colour PNG palette: VOC's bit-interleaved colours (0 black, 255 white)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    pal[765:768] = [255, 255, 255]
    return pal


def save_labels(labels: Tensor, image: Tensor, name: str, out: Path) -> None:
    """``labels (H, W)`` as ``out/labels/NAME`` (a palette PNG whose indices are the labels) and
    a blend with ``image (3, H, W) uint8`` as ``out/overlays/NAME``; ``name``: a relative name
    (:meth:`SegmentOptions.name`, never a raw key).

    Raises:
        InputError: ``name`` would leave ``out/labels`` (a key used as a name unchecked).
    """
    from PIL import Image

    from .._io import inside

    targets = [inside(out / sub, name) for sub in ("labels", "overlays")]
    if None in targets or any(t == (out / sub).resolve() for t, sub in zip(targets, ("labels", "overlays"))):
        raise InputError(f"the label file name {name!r} leaves {out}: give safe_relative_name(key)")
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
    lab = Image.fromarray(labels.to(torch.uint8).numpy(), mode="P")
    lab.putpalette(palette(int(labels.max()) + 1))
    lab.save(targets[0], format="PNG")
    rgb = Image.fromarray(image.permute(1, 2, 0).numpy())
    Image.blend(rgb, lab.convert("RGB"), 0.5).save(targets[1], format="PNG")


class SegmentExplainer(BaseBatchExplainer):
    """A batch explainer: ``images (N, 3, H, W) uint8`` and ``texts`` (each ``[key]``: the image's
    relative path, so that its PNGs and its mask can be found) -> one row per image: the labels
    it holds, the best prompt and its score, and with masks the flattened ``(K+1, K+1)`` confusion
    matrix and the foreground scores of the best prompt's map.

    Args:
        attribution: an image attribution with ``attribute_all`` over the prompts then the
            background prompts. map_input: ``uint8 images -> pixels``. options: :class:`SegmentOptions`.
    """

    splits_texts = False

    def __init__(self, attribution: Any, map_input: Any, options: SegmentOptions) -> None:
        self.attribution, self.map_input, self.o = attribution, map_input, options

    @staticmethod
    def describe(o: SegmentOptions) -> Dict[str, Any]:
        """What identifies the job's options (recorded in its configuration)."""
        return {"prompts": list(o.prompts), "background": list(o.background), "threshold": o.threshold,
                "normalise": o.normalise, "masks": str(o.masks) if o.masks else None, "ignore_index": o.ignore_index}

    def __call__(self, images: Tensor, texts: Sequence[Sequence[str]]) -> List[List[Dict[str, Any]]]:
        from ..scale.explain import attribute_with_scores

        maps, scores = attribute_with_scores(self.attribution, self.map_input(images))
        k = len(self.o.prompts)
        bg = maps[:, k:] if self.o.background else None
        labels = segment(maps[:, :k], images.shape[-2:], threshold=self.o.threshold, background=bg,
                         normalise=self.o.normalise)
        rows = []
        for n, t in enumerate(texts):
            name = self.o.name(t[0])
            save_labels(labels[n], images[n], name, self.o.out)
            best = int(scores[n, :k].argmax())
            row = {"text": self.o.prompts[best], "best": best, "score": float(scores[n, best]), "file": name,
                   "labels": sorted(set(labels[n].unique().tolist()))}
            if self.o.masks is not None:
                row.update(self._scores(labels[n], maps[n, best], t[0]))
            rows.append([row])
        return rows

    def _scores(self, labels: Tensor, best_map: Tensor, key: str) -> Dict[str, Any]:
        import torch.nn.functional as F

        from ..metrics.segmentation import confusion_matrix, foreground_scores

        from .._io import inside

        try:
            path = inside(self.o.masks, str(Path(key).with_suffix(".png")))
        except ValueError:  # an empty or a dot-only key
            path = None
        if path is None:
            raise InputError(f"the mask of record {key!r} would lie outside --masks {self.o.masks}: masks are read "
                             "only inside it (give keys that are relative paths)")
        truth = read_mask(path)
        if truth.shape != labels.shape:
            raise InputError(f"mask of {key} is {tuple(truth.shape)}, the image {tuple(labels.shape)}")
        k1 = len(self.o.prompts) + 1
        conf = confusion_matrix(labels, truth, k1, ignore_index=self.o.ignore_index)
        valid = truth != self.o.ignore_index
        sal = F.interpolate(best_map[None, None].float(), size=truth.shape, mode="bilinear", align_corners=False)[0, 0]
        fg = foreground_scores(sal[valid][None, None], (truth[valid] > 0)[None, None])
        return {"confusion": conf.flatten().tolist(), "fg_pixel_accuracy": float(fg.pixel_accuracy[0]),
                "fg_miou": float(fg.miou[0]), "fg_ap": float(fg.ap[0])}

    def to_table(self, rows: Sequence[Dict[str, Any]]) -> Any:
        """Rows as Arrow: image, text, best, score, labels, file (the PNGs' name under labels/ and
        overlays/); with masks confusion and fg_*."""
        import pyarrow as pa

        fields = [("image", pa.string()), ("text", pa.string()), ("best", pa.int32()), ("score", pa.float32()),
                  ("labels", pa.list_(pa.int32())), ("file", pa.string())]
        if self.o.masks is not None:
            fields += [("confusion", pa.list_(pa.int64())), ("fg_pixel_accuracy", pa.float32()),
                       ("fg_miou", pa.float32()), ("fg_ap", pa.float32())]
        return pa.Table.from_pydict({c: [r[c] for r in rows] for c, _ in fields}, schema=pa.schema(fields))


def summarise(out: Path, names: Sequence[str]) -> Dict[str, Any]:
    """The job's scores from its shards: the summed confusion matrix's mIoU, per-class IoU (by
    name, ``background`` first), pixel accuracy, and the mean foreground scores."""
    import math

    import pyarrow.parquet as pq

    from ..metrics.segmentation import segmentation_scores

    k1 = len(names) + 1
    conf = torch.zeros(k1 * k1, dtype=torch.long)
    fg: Dict[str, List[float]] = {"fg_pixel_accuracy": [], "fg_miou": [], "fg_ap": []}
    for f in sorted(out.glob("shard-*.parquet")):
        t = pq.read_table(f).to_pydict()
        for c in t["confusion"]:
            conf += torch.tensor(c)
        for key in fg:
            fg[key] += [v for v in t[key] if not math.isnan(v)]
    s = segmentation_scores(conf.reshape(k1, k1))
    per = {n: (None if math.isnan(v) else round(v, 4)) for n, v in zip(["background", *names], s.iou.tolist())}
    return {"miou": s.miou, "pixel_accuracy": s.pixel_accuracy, "mean_accuracy": s.mean_accuracy,
            "per_class_iou": per, **{k: sum(v) / len(v) if v else float("nan") for k, v in fg.items()}}
