"""The authors' protocol's batch explainer: for each image, every method's map for the explained
class, then :func:`~captum_gradeclip.metrics.deletion_protocol` and
:func:`~captum_gradeclip.metrics.insertion_protocol` in pixel space: one row per (image, method)
with the six curves and their AUCs."""

from __future__ import annotations

import time
import zlib
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import Tensor

from ..scale.protocols import BaseBatchExplainer

#: The curves kept per (image, method).
CURVES = tuple(f"{kind}_top{k}" for kind in ("deletion", "insertion") for k in (1, 5, 10))


class ProtocolExplainer(BaseBatchExplainer):
    """A batch explainer for the engine: for ``images (N, 3, H, W) uint8`` and ``texts`` (each
    ``[str(label)]``), one row per (image, method): label, prediction, the explained target, the
    explanation and protocol times, the six curves ``(P,)`` and their AUCs.

    Args:
        forward: ``pixels -> (N, C)`` zero-shot cosine (:func:`zero_shot_forward`).
        classify: ``(S, 3, H, W) uint8 -> (S, C)`` (:func:`pixel_classifier`).
        methods: name -> ``(pixels, targets (N,)) -> (N, 1, h, w)`` maps.
        map_input: ``(N, 3, H, W) uint8 -> pixels`` for the maps (:class:`MapInput`).
        target: ``"gt"`` or ``"pred"``.
    """

    splits_texts = False

    def __init__(self, forward: Any, classify: Callable[[Tensor], Tensor], methods: Dict[str, Any],
                 map_input: Callable[[Tensor], Tensor], target: str) -> None:
        self.forward, self.classify, self.methods = forward, classify, methods
        self.map_input, self.target = map_input, target

    def config(self) -> Dict[str, Any]:
        return {"protocol": "grad-eclip", "methods": list(self.methods), "target": self.target}

    def __call__(self, images: Tensor, texts: Sequence[Sequence[str]]) -> List[List[Dict[str, Any]]]:
        labels = torch.tensor([int(t[0]) for t in texts])
        with torch.no_grad():
            pred = self.classify(images).argmax(1)
        targets = labels if self.target == "gt" else pred
        pixels = self.map_input(images)
        rows: List[List[Dict[str, Any]]] = [[] for _ in range(len(images))]
        for name, fn in self.methods.items():
            t0 = time.perf_counter()
            maps = fn(pixels, targets).detach().float()
            seconds = (time.perf_counter() - t0) / len(images)
            for n in range(len(images)):
                rows[n].append(self._row(name, images[n], maps[n].sum(0), int(labels[n]), int(pred[n]),
                                         int(targets[n]), seconds))
        return rows

    def _row(self, name: str, image: Tensor, attribution: Tensor, label: int, pred: int, target: int,
             seconds: float) -> Dict[str, Any]:
        from ..metrics import deletion_protocol, insertion_protocol

        g = torch.Generator().manual_seed(zlib.crc32(image.numpy().tobytes()))  # same noise on any rank
        t0 = time.perf_counter()
        d = deletion_protocol(image, attribution, self.classify, target, generator=g)
        i = insertion_protocol(image, attribution, self.classify, target)
        row = {"method": name, "text": str(label), "label": label, "pred": pred, "target": target,
               "seconds": seconds, "protocol_seconds": time.perf_counter() - t0}
        for kind, res in (("deletion", d), ("insertion", i)):
            for j, k in enumerate((1, 5, 10)):
                row[f"{kind}_top{k}"] = res.hits[:, j]
                row[f"{kind}_top{k}_auc"] = float(res.auc[j])
        return row

    @staticmethod
    def to_table(rows: Sequence[Dict[str, Any]]) -> Any:
        """The rows as Arrow: image, method, label, pred, target (int32), seconds, protocol_seconds,
        the AUCs (float32) and the curves (list<float32>)."""
        import pyarrow as pa

        ints = ["label", "pred", "target"]
        floats = ["seconds", "protocol_seconds"] + [f"{c}_auc" for c in CURVES]
        fields = [("image", pa.string()), ("method", pa.string())] + [(c, pa.int32()) for c in ints]
        fields += [(c, pa.float32()) for c in floats] + [(c, pa.list_(pa.float32())) for c in CURVES]
        cols = {c: [r[c] for r in rows] for c, _ in fields if c not in CURVES}
        cols.update({c: [r[c].tolist() for r in rows] for c in CURVES})
        return pa.Table.from_pydict(cols, schema=pa.schema(fields))
