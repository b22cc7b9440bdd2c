"""``analyze attributes`` on the dataset engine: the probes' maps as two engine jobs, so a large
suite (COCO's instances) gets shards and resumption like decomposition and concreteness (one
process for now: two ``explain_dataset`` calls in one torchrun process hang, so the command refuses
``--engine`` under torchrun; one job whose explainer writes both methods' maps would lift that).

- ``DIR/maps/grad-eclip``: :class:`~captum_gradeclip.scale.CLIPExplainer` (Grad-ECLIP, the image
  tower's last attention layer), the maps :func:`.attributes.explain_scene` computes;
- ``DIR/maps/game``: :class:`GAMEExplainer` (GAME over all image attention layers).

Each image's texts are its probes' prompts and distractors. The probes are then scored on rank 0
from the two jobs (:func:`read_jobs`, :func:`.attributes.from_job`), GAME's columns included.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple, Union

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedCLIP

__all__ = ["GAMEExplainer", "ProbeScenes", "read_jobs", "run_jobs"]

#: The jobs' folders under ``DIR/maps``, by method name.
JOBS = ("grad-eclip", "game")


class GAMEExplainer:
    """A batch explainer for :func:`~captum_gradeclip.scale.explain_dataset`: GAME maps and
    scores of each image's texts, ``(pixels (N, 3, H, W), N lists of texts) -> N lists of rows
    {"text", "score", "map" (h, w)}`` (the columns: the union of the batch's texts)."""

    def __init__(self, clip: "LoadedCLIP") -> None:
        self.clip = clip

    def config(self) -> Dict[str, Any]:
        """What identifies this explainer in a job's configuration."""
        return {"explainer": "game", "layers": "all image attention layers"}

    def __call__(self, pixels: Tensor, texts: Sequence[Sequence[str]]) -> List[List[Dict[str, Any]]]:
        from ..baselines import GAME

        cols = list(dict.fromkeys(t for ts in texts for t in ts))
        ids, mask = self.clip.tokens(cols)
        sim = self.clip.image_similarity(ids, mask)
        with torch.enable_grad():
            maps = GAME(sim, self.clip.image_layers).attribute_all(pixels).detach().float().cpu()
        with torch.no_grad():
            scores = sim(pixels).float().cpu()
        at = {t: k for k, t in enumerate(cols)}
        return [[{"text": t, "score": float(scores[n, at[t]]), "map": maps[n, at[t]]} for t in ts]
                for n, ts in enumerate(texts)]


class ProbeScenes:
    """Probe scenes as an engine dataset: ``[i] -> (key, pixels (3, H, W), texts)`` (the scene's
    prompts and distractors)."""

    def __init__(self, scenes: Sequence[Any]) -> None:
        self.scenes = list(scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> Tuple[str, Tensor, List[str]]:
        sc = self.scenes[i]
        return sc.key, sc.pixels, list(dict.fromkeys(t for p in sc.probes for t in p.texts()))


def run_jobs(dataset: Any, clip: "LoadedCLIP", out: Union[str, Path], *, config: Dict[str, Any], batch_size: int = 1,
             shard_size: int = 64) -> Dict[str, Path]:
    """Both jobs (:data:`JOBS`) into ``out/<method>``, sharded over torchrun's ranks and resumed
    when run again. Returns method -> folder.

    Raises:
        ScaleError: a folder holds another job, or cannot be written.
    """
    from ..scale import CLIPExplainer, explain_dataset

    paths = {m: Path(out) / m for m in JOBS}
    for m, explainer in (("grad-eclip", CLIPExplainer(clip)), ("game", GAMEExplainer(clip))):
        explain_dataset(dataset, explainer, paths[m], config={**config, "method": m}, batch_size=batch_size,
                        shard_size=shard_size, num_workers=0, progress=False)
    return paths


def read_jobs(paths: Dict[str, Path]) -> Tuple[Dict[Tuple[str, str], Dict[str, Any]], List[Dict[str, Any]]]:
    """``(image, text) -> {"score", "map" (h, w), "game_map" (h, w)}`` of the two finished jobs
    (``game_map`` where the GAME job has the row), and both jobs' error rows."""
    from ..scale import read_maps
    from .common import job_errors

    job = {(r["image"], r["text"]): dict(r) for r in read_maps(paths["grad-eclip"], columns=["image", "text", "score",
                                                                                            "map"])}
    for r in read_maps(paths["game"], columns=["image", "text", "map"]):
        if (r["image"], r["text"]) in job:
            job[r["image"], r["text"]]["game_map"] = r["map"]
    return job, job_errors(paths["grad-eclip"]) + job_errors(paths["game"])
