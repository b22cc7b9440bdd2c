"""A dataset job, typed: what every job (``explain-dataset``, ``segment``, the benchmarks, the
analyses' maps) hands the engine's one entry point, :func:`.engine.run_job`.

A job is its output folder, what identifies it (``config``: a rerun with another one is
refused), its size, how it is cut and read, and ``load``: a function of the device that builds
the dataset and the :class:`~.protocols.BatchExplainer`. ``load`` runs after the output folder
is prepared and inside its guard, so a model that does not load leaves no job behind, and on
the device of this process's rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

#: ``load(device) -> (dataset, explainer)``: ``dataset[i] -> (key, pixels (3, H, W), texts)``,
#: ``len(dataset)`` equal to the job's ``n_items``; ``explainer`` a batch explainer.
Loader = Callable[[Any], Tuple[Any, Any]]


@dataclass(frozen=True)
class JobSpec:
    """One dataset job.

    Attributes:
        out: the output folder (created; rerunning the same job resumes it).
        config: what identifies the job besides its sizes (model, method, inputs): recorded in
            ``config.json`` with ``items``, ``shard_size`` and ``batch_size``.
        n_items: the dataset's length, known before the model is loaded (it fixes the shards).
        load: ``device -> (dataset, explainer)`` (:data:`Loader`).
        batch_size, shard_size: images per batch and per shard (both fix the maps' bits).
        num_workers: ``DataLoader`` workers decoding images (0: in the main process).
        progress: show a progress bar per rank.
        device: ``"auto"``, ``"cpu"``, ``"cuda:0"``, ... (:func:`captum_gradeclip.distributed.init`).
    """

    out: Path
    config: Dict[str, Any]
    n_items: int
    load: Loader
    batch_size: int = 16
    shard_size: int = 256
    num_workers: int = 2
    progress: bool = True
    device: str = "auto"
