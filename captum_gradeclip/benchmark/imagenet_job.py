"""The Grad-ECLIP authors' ImageNet protocol as a dataset job (:func:`run_protocol`): its typed
settings (:class:`ProtocolConfig`), what identifies it, and the :class:`~captum_gradeclip.scale.job.JobSpec`
the engine runs (sharded over torchrun's ranks, resumable). The pieces: the inputs
(:mod:`.labelled`), the zero-shot head (:mod:`.zeroshot`), the maps' inputs
(:mod:`captum_gradeclip.images`), the explainer (:mod:`.imagenet_explainer`) and the results
(:mod:`.imagenet_report`); the command is :mod:`.imagenet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from ..errors import InputError
from .imagenet_report import aggregate
from .labelled import LabelledImages, ProtocolImages, round_robin
from .zeroshot import Template, class_names, template_text, templates

if TYPE_CHECKING:  # pragma: no cover
    from ..scale.job import JobSpec
    from .imagenet_explainer import ProtocolExplainer

#: Images per shard of the protocol job.
SHARD_SIZE = 32


@dataclass(frozen=True)
class ProtocolConfig:
    """The authors' protocol's settings (the defaults are ``benchmark --protocol grad-eclip``'s).

    Attributes:
        out_dir: the results go here, the curves under ``out_dir/curves``.
        n: images, one class after the other in turn (``None``: all).
        model, open_clip: the model, as :func:`~captum_gradeclip.models.load` takes them.
        methods: the ``--methods`` selection of :func:`~.methods.select` (``None``: all).
        batch: images per batch.
        target: ``"gt"`` (explain the label) or ``"pred"`` (the prediction).
        map_input: ``"native"`` (maps at the image's resolution) or ``"model"`` (its input size).
        class_names: ``None`` (the folder names), ``"imagenet"`` or a file (:func:`~.zeroshot.class_names`).
        templates: ``"imagenet"``, a file, or one template with ``{}`` (:func:`~.zeroshot.templates`).
    """

    out_dir: str = "benchmark_out"
    n: Optional[int] = None
    model: Optional[str] = None
    open_clip: Optional[str] = None
    methods: Optional[Sequence[str]] = None
    batch: int = 16
    target: str = "gt"
    map_input: str = "native"
    class_names: Optional[str] = None
    templates: str = "imagenet"


def job_description(cfg: ProtocolConfig, keys: Sequence[str], names: Sequence[str],
                    temps: Sequence[Template]) -> Dict[str, Any]:
    """What identifies the job besides its sizes: the model, methods, target, map input, the
    classes and templates, and the hash of the work list."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(list(keys)).encode()).hexdigest()
    return {"protocol": "grad-eclip", "model": {"hf": cfg.model, "open_clip": cfg.open_clip},
            "methods": None if cfg.methods is None else list(cfg.methods), "target": cfg.target,
            "map_input": cfg.map_input, "classes": list(names), "templates": [template_text(t) for t in temps],
            "images_sha256": digest}


def protocol_job(cfg: ProtocolConfig, dataset: ProtocolImages, names: List[str], temps: List[Template]) -> "JobSpec":
    """The job: ``dataset`` explained by the selected methods for ``cfg.target`` into
    ``cfg.out_dir/curves``; the model is loaded (:func:`load_explainer`) once the folder is prepared."""
    from ..scale.job import JobSpec

    keys = [it.image for it in dataset.items]
    return JobSpec(Path(cfg.out_dir) / "curves", job_description(cfg, keys, names, temps), len(dataset),
                   lambda device: (dataset, load_explainer(cfg, names, temps)), batch_size=cfg.batch,
                   shard_size=SHARD_SIZE, num_workers=1, progress=False, device="cpu")


def load_explainer(cfg: ProtocolConfig, names: Sequence[str], temps: Sequence[Template]) -> "ProtocolExplainer":
    """The model, its zero-shot head over ``names`` x ``temps`` and the protocol's explainer."""
    from ..images import map_input_for
    from ..models import load
    from .imagenet_explainer import ProtocolExplainer
    from .methods import image_methods, select
    from .zeroshot import pixel_classifier, zero_shot_forward, zero_shot_weights

    clip = load(cfg.model, cfg.open_clip)
    forward = zero_shot_forward(clip, zero_shot_weights(clip, names, temps))
    return ProtocolExplainer(forward, pixel_classifier(clip, forward), select(image_methods(clip, forward), cfg.methods),
                             map_input_for(clip, cfg.map_input), cfg.target)


def run_protocol(cfg: ProtocolConfig, source: LabelledImages) -> Optional[Dict[str, Any]]:
    """The protocol on this rank's shards of ``source`` (``cfg.n`` images, one class after the
    other in turn); rank 0 returns the results (other ranks ``None``).

    Raises:
        InputError: bad class names or templates, no image readable, or another job's curves
            in ``cfg.out_dir``.
    """
    from ..scale.engine import run_job
    from ..scale.store import require_pyarrow

    require_pyarrow("the grad-eclip protocol")
    names, temps = class_names(cfg.class_names, source.classes), templates(cfg.templates)
    dataset = ProtocolImages(source, round_robin(source.labels, cfg.n))
    spec = protocol_job(cfg, dataset, names, temps)
    summary = run_job(spec)
    if not summary.is_main:
        return None
    if summary.pairs == 0:
        raise InputError(f"none of the {len(dataset)} images could be read or explained (see {spec.out / 'errors.jsonl'})")
    keys = [it.image for it in dataset.items]
    return dict(protocol="grad-eclip", images=len(keys), errors=summary.errors, classes=len(names),
                templates=len(temps), target=cfg.target, map_input=cfg.map_input, world_size=summary.world_size,
                curves=str(spec.out), image=aggregate(spec.out, keys))
