"""Dataset scale: explain whole datasets, sharded over torchrun's processes and resumable.

    captum-gradeclip explain-dataset --images DIR --prompts prompts.txt --out OUT
    torchrun --nproc-per-node 2 -m captum_gradeclip explain-dataset --images DIR --prompts prompts.txt --out OUT

Modules: :mod:`.data` (work lists and the image-folder dataset), :mod:`.explain` (one batch:
Grad-ECLIP maps for each image's texts), :mod:`.engine` (shards, ranks, the loop),
:mod:`.store` (the output folder: config, shards, errors, manifest), :mod:`.table` (the Parquet
schema and :func:`read_maps`), :mod:`.cli` (the command); the process group is
:mod:`captum_gradeclip.distributed`.
Needs pyarrow: ``pip install 'captum-gradeclip[scale]'``.
"""

from .data import Example, ImageFolderDataset, WorkItem, class_items, pair_items, prompt_items
from .engine import explain_dataset
from .explain import AttributeAllExplainer, CLIPExplainer
from .store import ScaleError
from .table import read_maps, schema

__all__ = [
    "AttributeAllExplainer",
    "CLIPExplainer",
    "Example",
    "ImageFolderDataset",
    "ScaleError",
    "WorkItem",
    "class_items",
    "explain_dataset",
    "pair_items",
    "prompt_items",
    "read_maps",
    "schema",
]
