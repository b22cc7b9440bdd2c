"""``captum-gradeclip analyze attributes``: what CLIP localises, by category, and where it fails.

    captum-gradeclip analyze attributes --out DIR                       # ShapesCLIP, generated probes
    captum-gradeclip analyze attributes --out DIR --model NAME --pairs PROBES.jsonl
    captum-gradeclip analyze attributes --out DIR --model NAME --pairs PROBES.jsonl --maps JOB   # explain-dataset's maps
    captum-gradeclip analyze attributes --out DIR --model NAME --coco-instances instances_val2017.json --images val2017/

Writes ``DIR/rows.parquet`` (or ``rows.csv``: one row per probe), ``DIR/summary.json`` (per
category: the model's accuracy, the pointing game and energy pointing game of Grad-ECLIP and of
GAME, with 95% bootstrap intervals; binding's energy shares; absent prompts' concentration) and
``DIR/attributes.png``. Each image's prompts and distractors are explained in one
``attribute_all`` call per method, one image at a time; with ``--engine`` as two dataset-engine
jobs (``DIR/maps/grad-eclip``, ``DIR/maps/game``: shards and resumption, one process for now;
``--batch-size`` images per batch, default 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Iterable, List, Tuple

from ..errors import CLIError
from .common import add_model_args


def _suite(args: argparse.Namespace, clip) -> Tuple[Iterable, list, dict, str]:
    """``(scenes, error rows, not-expressible categories, description)`` of the probe suite (for
    a probe file, the scenes are an iterator that fills the error rows as it goes, and
    ``--out/job_pairs.jsonl`` lists the texts a ``--maps`` job must hold)."""
    import json

    from .._io import open_image
    from . import attributes as A
    from .probes import iter_probes, job_pairs, read_probes

    if args.coco_instances:
        return _coco_suite(args, clip)
    if args.pairs:
        lines = read_probes(args.pairs, args.images)
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "job_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in job_pairs(lines)),
                                                             encoding="utf-8")
        except OSError as e:
            raise CLIError(f"cannot write --out {args.out}: {e.strerror or e}") from None
        errors: list = []  # filled while the scenes are read, one image at a time
        scenes = iter_probes(lines, lambda im: clip.pixels([im])[0], open_image, errors)
        return scenes, errors, {}, f"probe file {args.pairs} ({len(lines)} probes)"
    try:
        scenes = A.shapes_suite(clip, args.scenes)
    except ValueError as e:
        raise CLIError(str(e)) from None
    return scenes, [], dict(A.NOT_EXPRESSIBLE), (
        f"ShapesCLIP suite: {args.scenes} three-object scenes (seeds {A.ATTRIBUTES_SEED_START}...) and "
        f"{args.scenes} two-object binding scenes (seeds {A.BINDING_SEED_START}...)")


def _coco_suite(args: argparse.Namespace, clip) -> Tuple[Iterable, list, dict, str]:
    """The probes generated from ``--coco-instances`` (:func:`.coco.instance_probes`), one image at a
    time; the annotations that cannot be used are error rows."""
    import json

    from .._io import open_image
    from .attributes import ProbeRow
    from .coco import instance_probes, instance_scenes, read_instances

    if not args.images:
        raise CLIError("--coco-instances takes --images DIR (the folder of its file_names)")
    inst = read_instances(args.coco_instances)
    errors: list = [ProbeRow(f"annotation:{i}", e["image"], "other", "", None, error=e["error"])
                    for i, e in enumerate(inst.errors)]
    texts: dict = {}
    for image_id in sorted(inst.images):
        im = inst.images[image_id]
        specs = instance_probes(im, inst.objects.get(image_id, []), inst.categories)
        if specs and args.coco_images is not None and len(texts) >= args.coco_images:
            break
        for s in specs:
            texts.setdefault(im.file_name, []).extend([s.prompt] + ([s.distractor] if s.distractor else []))
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "job_pairs.jsonl").write_text("".join(json.dumps({"image": k, "texts": list(dict.fromkeys(v))})
                                                                + "\n" for k, v in texts.items()), encoding="utf-8")
    except OSError as e:
        raise CLIError(f"cannot write --out {args.out}: {e.strerror or e}") from None
    scenes = instance_scenes(inst, args.images, lambda im: clip.pixels([im])[0], open_image, errors,
                             limit=args.coco_images)
    return scenes, errors, {}, f"COCO instances {args.coco_instances} ({len(texts)} images with probes)"


def _engine(args: argparse.Namespace, clip, scenes: Iterable, out: Path, what: str) -> Tuple[Any, Any]:
    """The suite's maps as two engine jobs (``out/maps/grad-eclip``, ``out/maps/game``: shards and
    resumption; one process: under torchrun it is refused), read back: ``(scenes, job)``; ``(None, None)`` on the
    other ranks. The scenes are held as a list (their pixels, for the engine's dataset)."""
    import os

    from .attributes_engine import ProbeScenes, read_jobs, run_jobs
    from .common import is_main_process

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # two engine jobs in one torchrun process hang (see the report)
        raise CLIError("--engine runs in one process for now (its two engine jobs do not run under torchrun): "
                       "run it without torchrun; the shards and resumption work")

    scenes = list(scenes)
    config = {"study": "attributes", "model": args.open_clip or args.model or "ShapesCLIP (shipped)", "suite": what}
    paths = run_jobs(ProbeScenes(scenes), clip, out / "maps", config=config, batch_size=args.batch_size,
                     shard_size=args.shard_size)
    if not is_main_process():
        return None, None
    job, _ = read_jobs(paths)
    return scenes, job


def _read_job(maps: str) -> dict:
    """``(image, text) -> row`` of a finished explain-dataset job (``map``, ``score``)."""
    from ..scale import read_maps

    if not list(Path(maps).glob("shard-*.parquet")):
        raise CLIError(f"--maps {maps} holds no shard-*.parquet: give a finished explain-dataset job's --out folder")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise CLIError("--maps reads Parquet, which needs pyarrow: pip install \"captum-gradeclip[analysis]\"") from None
    return {(r["image"], r["text"]): r for r in read_maps(maps, columns=["image", "text", "score", "map"])}


def _save_png(fig, path: Path) -> None:
    """The figure as a 256-colour PNG (a third of the RGB file's size, the same to the eye)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    import matplotlib.pyplot as plt

    plt.close(fig)


def cmd_attributes(args: argparse.Namespace) -> None:
    import torch

    from . import attributes as A
    from .attributes_figure import attributes_figure
    from .common import load_clip, write_rows, write_summary

    if args.maps and not (args.pairs or args.coco_instances):
        raise CLIError("--maps needs --pairs PROBES.jsonl (the generated ShapesCLIP suite is explained directly): "
                       "give the probe file the job was run for, or drop --maps")
    if args.scenes < 1 or args.examples < 1:
        raise CLIError(f"--scenes and --examples must be >= 1, got {args.scenes} and {args.examples}")
    if args.engine and args.maps:
        raise CLIError("--engine computes the maps as engine jobs; --maps reads a finished one: give one of them")
    out = Path(args.out)
    t0 = time.perf_counter()
    clip = load_clip(args)
    scenes, errors, not_expr, what = _suite(args, clip)
    job = _read_job(args.maps) if args.maps else None
    if args.engine:
        scenes, job = _engine(args, clip, scenes, out, what)
        if scenes is None:
            return
    with torch.enable_grad():
        rows, kept = A.measure(clip, scenes, job, keep=3 * args.examples)
    rows: List[A.ProbeRow] = rows + errors
    summary = A.summarize(rows, not_expressible=not_expr)
    summary.update(suite=what, seconds=round(time.perf_counter() - t0, 1),
                   maps=args.maps or (str(out / "maps") if args.engine else "computed"),
                   methods={"grad_eclip": "ImageGradECLIP, the image tower's last attention layer"
                            + (f" (read from the explain-dataset job {args.maps})" if args.maps else ""),
                            "game": "not in an explain-dataset job" if args.maps
                            else "GAME (Chefer et al.), all image attention layers"})
    written = [write_rows([r.flat() for r in rows], out), write_summary(summary, out)]
    table = A.markdown_table(summary)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    fig = attributes_figure(kept, rows, summary, examples=args.examples)
    _save_png(fig, out / "attributes.png")
    written += [out / "table.md", out / "attributes.png"]
    print(table)
    if summary["n_errors"]:
        print(f"{summary['n_errors']} of {summary['n_probes']} probes could not be measured: see the \"error\" column")
    print("wrote " + ", ".join(str(p) for p in written))


def add_parser(asub: "argparse._SubParsersAction") -> None:
    """Register ``attributes`` on ``analyze``'s subparsers ``asub``."""
    p = asub.add_parser("attributes", help="study: what CLIP localises by category (object, colour, binding, absent)")
    add_model_args(p)
    p.add_argument("--scenes", type=int, default=200,
                   help="ShapesCLIP: scenes of the generated suite (default 200; each gives one probe per category)")
    p.add_argument("--examples", type=int, default=4, help="examples per category in the figure (default 4)")
    p.add_argument("--coco-instances", default=None, metavar="instances_val2017.json",
                   help="COCO instances (with --images DIR): probes generated from the annotations, every category")
    p.add_argument("--engine", action="store_true",
                   help="compute the maps as dataset-engine jobs in DIR/maps/{grad-eclip,game} (shards, resumption; "
                        "one process), GAME's columns included")
    p.add_argument("--shard-size", type=int, default=64, help="with --engine: images per shard (default 64)")
    p.add_argument("--coco-images", type=int, default=None, metavar="N",
                   help="with --coco-instances: the first N images (by id) that have probes (default: all)")
    p.set_defaults(func=cmd_attributes, batch_size=1)
