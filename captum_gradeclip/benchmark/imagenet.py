"""``benchmark --images DIR --protocol grad-eclip``: the Grad-ECLIP authors' ImageNet protocol, the
command over its job (:mod:`.imagenet_job`).

For every image of a labelled tree ``DIR/CLASS/IMAGE`` (or a Hugging Face / WebDataset source,
:mod:`captum_gradeclip.scale.sources`): a zero-shot classifier built from class names x prompt
templates (the mean of the normalised text embeddings per class, normalised; :mod:`.zeroshot`);
the image shrunk to 640 px on its shorter side if larger; each method's map explained for the
ground-truth class (``--target gt``) or the prediction (``pred``) at the image's native
resolution (resized to a multiple of the patch size, bicubic, as the authors'
``imgprocess_keepsize``; :mod:`captum_gradeclip.images`); then
:func:`~captum_gradeclip.metrics.deletion_protocol` and :func:`~captum_gradeclip.metrics.insertion_protocol`
in pixel space (:mod:`.imagenet_explainer`). One Parquet row per (image, method) under
``OUT_DIR/curves/``; rank 0 averages (:mod:`.imagenet_report`) and writes ``benchmark.json``,
``.md`` and ``.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .imagenet_job import ProtocolConfig
from .labelled import LabelledImages


def protocol_config(args: Any) -> ProtocolConfig:
    """The protocol's settings from the checked ``benchmark`` flags."""
    return ProtocolConfig(out_dir=args.out_dir, n=args.n, model=args.model, open_clip=args.open_clip,
                          methods=args.methods, batch=args.batch, target=args.target, map_input=args.map_input,
                          class_names=args.class_names, templates=args.templates)


def labelled_images(args: Any) -> LabelledImages:
    """The labelled images ``--images`` (or, where given, ``--hf-dataset`` / ``--webdataset``) name.

    Raises:
        InputError: none of them given, or see :func:`.labelled.folder_source` and
            :func:`captum_gradeclip.scale.sources.labelled_source`.
    """
    from .labelled import folder_source

    if getattr(args, "hf_dataset", None) or getattr(args, "webdataset", None):
        from ..scale.sources import labelled_source, source_config

        return LabelledImages(*labelled_source(source_config(vars(args), args.out_dir)))
    if not args.images:
        raise InputError("--protocol grad-eclip needs labelled images: --images DIR (DIR/CLASS/IMAGE), "
                         "--hf-dataset or --webdataset")
    return folder_source(Path(args.images))


def cmd_protocol(args: Any) -> None:
    """``benchmark --protocol grad-eclip``: run, then (rank 0) write ``benchmark.json``, ``.md``, ``.png``."""
    import json

    from .imagenet_job import run_protocol
    from .imagenet_report import figure, table

    res = run_protocol(protocol_config(args), labelled_images(args))
    if res is None:
        return
    out = Path(args.out_dir)
    md = table(res)
    (out / "benchmark.json").write_text(json.dumps(res, indent=1))
    (out / "benchmark.md").write_text(md + "\n")
    figure(res, out / "benchmark.png")
    print(md)
    print(f"\nwrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")
