"""``captum-gradeclip analyze decomposition``: a caption's map against its phrases' maps and weights.

    captum-gradeclip analyze decomposition --out DIR                      # ShapesCLIP, held-out scenes
    captum-gradeclip analyze decomposition --pairs pairs.jsonl --model NAME --out DIR
    captum-gradeclip analyze decomposition --pairs pairs.jsonl --maps JOB --out DIR   # read a finished job
    torchrun --nproc-per-node 2 -m captum_gradeclip analyze decomposition --out DIR

A pairs line: ``{"image": "rel/path.jpg", "texts": ["a dog on a red sofa"], "phrases": ["a dog",
"a red sofa"]}``. The command writes ``DIR/job_pairs.jsonl``: the texts each image needs (caption,
phrases, caption without each phrase), which an ``explain-dataset --text-maps --pairs`` job must
hold to be read with ``--maps``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Tuple

from ..errors import CLIError
from .common import (
    AnalysisError,
    SceneDataset,
    add_maps_job_args,
    add_model_args,
    is_main_process,
    job_errors,
    load_clip,
    read_pairs,
    run_maps_job,
    write_rows,
    write_summary,
)


def _scene_inputs(args: argparse.Namespace, clip) -> Tuple[Any, List[Any], Callable, dict]:
    from .decomposition import DECOMPOSITION_SEED_START, PairSpec, job_texts

    seeds = range(DECOMPOSITION_SEED_START, DECOMPOSITION_SEED_START + args.scenes)
    data = SceneDataset(clip, seeds, lambda sc: job_texts(sc.caption(), sc.prompts), n_objects=lambda s: 2 + s % 3)
    scenes = [data.scene(i) for i in range(len(data))]
    specs = [PairSpec(f"scene-{s}", sc.caption(), tuple(sc.prompts), sc.masks) for s, sc in zip(seeds, scenes)]
    images = {sp.image: sc.image for sp, sc in zip(specs, scenes)}
    return data, specs, images.__getitem__, {"scenes": [seeds.start, seeds.stop - 1], "objects": "2 + seed % 3"}


def _pair_specs(args: argparse.Namespace) -> List[Any]:
    """The pairs file's pairs, checked (one caption each, phrases that are parts of it).

    Raises:
        AnalysisError: a bad line, naming the file and line.
    """
    from .decomposition import PairSpec, check_phrases

    specs = []
    for ln in read_pairs(args.pairs, args.images):
        if len(ln.texts) != 1:
            raise AnalysisError(f"{ln.where()}: give one caption in \"texts\" (and its \"phrases\"), got {len(ln.texts)} texts")
        try:
            phrases = check_phrases(ln.texts[0], ln.fields.get("phrases") or [])
        except ValueError as e:
            raise AnalysisError(f"{ln.where()}: {e}") from None
        specs.append(PairSpec(ln.image, ln.texts[0], tuple(phrases)))
    return specs


def _pair_inputs(args: argparse.Namespace, clip, specs: List[Any]) -> Tuple[Any, List[Any], Callable, dict]:
    from .._io import open_image
    from ..scale import ImageFolderDataset, WorkItem
    from .decomposition import job_texts

    root = Path(args.images) if args.images else Path(args.pairs).parent
    items = [WorkItem(sp.image, tuple(job_texts(sp.caption, sp.phrases))) for sp in specs]
    return ImageFolderDataset(root, items, clip.pixels), specs, lambda k: open_image(str(root / k)), {"pairs": str(args.pairs)}


def cmd_decomposition(args: argparse.Namespace) -> None:
    """Compute (or read) the maps, then rows, summary and figure (rank 0)."""
    if min(args.batch_size, args.shard_size, args.scenes) < 1:
        raise CLIError(f"--batch-size, --shard-size and --scenes must be at least 1, got {args.batch_size}, "
                       f"{args.shard_size} and {args.scenes}")
    from ..scale import read_maps
    from .decomposition import from_maps, job_texts, summarize
    from .figures import decomposition_figure
    from .words import bpe_tokens, word_scheme

    specs = _pair_specs(args) if args.pairs else None  # a bad pairs file fails before the model loads
    clip = load_clip(args)
    data, specs, image_of, inputs = _pair_inputs(args, clip, specs) if args.pairs else _scene_inputs(args, clip)
    out = Path(args.out)
    if args.maps:
        maps = Path(args.maps)
        if not list(maps.glob("shard-*.parquet")):
            raise CLIError(f"--maps {maps} holds no shard-*.parquet: give a finished explain-dataset --text-maps job")
    else:
        config = {"study": "decomposition", "model": args.open_clip or args.model or "ShapesCLIP (shipped)", **inputs}
        maps = run_maps_job(data, clip, out / "maps", batch_size=args.batch_size, shard_size=args.shard_size,
                               config=config)
    if not is_main_process():
        return
    (out / "job_pairs.jsonl").write_text("".join(json.dumps({"image": sp.image, "texts": job_texts(sp.caption, sp.phrases)})
                                                 + "\n" for sp in specs), encoding="utf-8")
    job = read_maps(maps, columns=["image", "text", "score", "map", "word_map"])
    rows, errors, examples = from_maps(specs, job, lambda t: bpe_tokens(clip, t)[0], keep=args.figure_pairs,
                                       scheme=word_scheme(clip.tokenizer))
    errors = [{"image": e.image, "text": e.text, "error": e.error} for e in errors] + job_errors(maps)
    if not rows:
        raise AnalysisError(f"no pair could be analysed ({len(errors)} errors, the first: {errors[0]['error'] if errors else '-'})")
    write_rows(rows, out)
    (out / "errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors), encoding="utf-8")
    summary = {**summarize(rows, n_boot=args.n_boot), "errors": len(errors), "maps": str(maps), "inputs": inputs,
               "model": args.open_clip or args.model or "ShapesCLIP (shipped)"}
    write_summary(summary, out)
    for ex in examples:
        ex["image"] = image_of(ex["image_key"])
    decomposition_figure(examples, out / "decomposition.png")
    _report(summary, out)


def _report(s: dict, out: Path) -> None:
    def m(name):
        c = s[name]["mean"]
        return "n/a" if c is None else f"{c.mean:.3f} [{c.low:.3f}, {c.high:.3f}] (n={s[name]['n']})"
    print(f"{out}: {s['pairs']} pairs, {s['errors']} errors; r(M, sum w_p M_p) {m('r_weighted')}, "
          f"r(M, mean M_p) {m('r_mean')}, IoU {m('iou_weighted')} / {m('iou_mean')}, "
          f"Spearman(drop, w_p) {m('spearman_drop_weight')}, pointing {m('pointing_rate')}, "
          f"energy in objects {m('energy_in_objects')} (their area {m('object_area')})", file=sys.stderr)


def add_parser(asub: "argparse._SubParsersAction") -> None:
    """Register ``decomposition`` on ``analyze``'s subparsers."""
    p = asub.add_parser("decomposition", help="a caption's image map against its phrases' maps and word weights")
    add_model_args(p)
    add_maps_job_args(p, scenes=200)
    p.add_argument("--figure-pairs", type=int, default=4, help="pairs shown in the figure (default 4)")
    p.set_defaults(func=cmd_decomposition)
