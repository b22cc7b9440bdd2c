"""Dataset scale: explain whole datasets, sharded over torchrun's processes and resumable.

    captum-gradeclip explain-dataset --images DIR --prompts prompts.txt --out OUT
    torchrun --nproc-per-node 2 -m captum_gradeclip explain-dataset --images DIR --prompts prompts.txt --out OUT

Modules: :mod:`.data` (work lists and the image-folder dataset), :mod:`.explain` (one batch:
Grad-ECLIP maps for each image's texts), :mod:`.protocols` (what the engine needs of a batch
explainer: :class:`BatchExplainer`, :class:`BaseBatchExplainer`), :mod:`.job` (a job, typed:
:class:`JobSpec`), :mod:`.records` (error rows, input counts, :class:`RunSummary`),
:mod:`.engine` (shards, ranks, the loop; :func:`run_job`, the one entry point of every job),
:mod:`.store` (the output folder: config, shards, errors, manifest), :mod:`.table` (the Parquet
schema and :func:`read_maps`), :mod:`.cli` (the command); the process group is
:mod:`captum_gradeclip.distributed`.
Needs pyarrow: ``pip install 'captum-gradeclip[scale]'``.
"""

from .data import Example, ImageFolderDataset, WorkItem, class_items, pair_items, prompt_items
from .engine import explain_dataset, run_job
from .explain import AttributeAllExplainer, CLIPExplainer
from .job import JobSpec
from .protocols import BaseBatchExplainer, BatchExplainer, as_batch_explainer
from .records import ErrorRow, InputCounts, RunSummary
from .store import ScaleError
from .table import read_maps, schema

__all__ = [
    "AttributeAllExplainer",
    "BaseBatchExplainer",
    "BatchExplainer",
    "CLIPExplainer",
    "ErrorRow",
    "Example",
    "ImageFolderDataset",
    "InputCounts",
    "JobSpec",
    "RunSummary",
    "ScaleError",
    "WorkItem",
    "as_batch_explainer",
    "class_items",
    "explain_dataset",
    "pair_items",
    "prompt_items",
    "read_maps",
    "run_job",
    "schema",
]
