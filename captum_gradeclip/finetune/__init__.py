"""Grad-ECLIP's application: fine-grained fine-tuning of CLIP on region–phrase pairs that a frozen
teacher's Grad-ECLIP maps provide.

- :class:`RegionPhraseLoss`: the objective, an ``nn.Module`` for any training loop;
- :class:`Teacher` / :func:`phrase_maps`: mining (image, phrase) maps with ``attribute_all``;
- :func:`soft_mask`, :func:`grid_masks`, :func:`uniform_masks`: region masks on the patch grid;
- :func:`dense_features`, :func:`pool_regions`: the student's dense features and region embeddings;
- :func:`finetune` / :class:`FinetuneConfig`: the training loop (single process or DDP, resumable),
  optionally through low-rank adapters (:mod:`.lora`, ``lora=RANK``) and pulled back towards the
  initial weights (WiSE-FT, :func:`wise`, ``wise=ALPHA``);
- :mod:`.evaluate`: region accuracy, segmentation mIoU, recognition, pointing game on ShapesCLIP;
- ``captum-gradeclip finetune`` and ``captum-gradeclip wise``: the commands (:mod:`.cli`).
"""

from .data import DataError, PairsSource, Sample, ShapesSource, read_pairs
from .dense import dense_features, pool_regions
from .evaluate import evaluate_finetuning, pointing_game, region_accuracy, segmentation_miou
from .loss import RegionPhraseLoss, RegionPhraseLossOutput
from .masks import grid_masks, soft_mask, uniform_masks
from .teacher import Teacher, clip_maps, phrase_maps
from .train import FinetuneConfig, Student, finetune
from .wise import interpolate_state, wise, wise_folders

__all__ = ["DataError", "FinetuneConfig", "PairsSource", "RegionPhraseLoss", "RegionPhraseLossOutput", "Sample",
           "ShapesSource", "Student", "Teacher", "clip_maps", "dense_features", "evaluate_finetuning", "finetune",
           "grid_masks", "interpolate_state", "phrase_maps", "pointing_game", "pool_regions", "read_pairs",
           "region_accuracy", "segmentation_miou", "soft_mask", "uniform_masks", "wise", "wise_folders"]
