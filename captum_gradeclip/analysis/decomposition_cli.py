"""``captum-gradeclip analyze decomposition``: a caption's map against its phrases' maps and weights.

    captum-gradeclip analyze decomposition --out DIR                      # ShapesCLIP, held-out scenes
    captum-gradeclip analyze decomposition --pairs pairs.jsonl --model NAME --out DIR
    captum-gradeclip analyze decomposition --pairs pairs.jsonl --maps JOB --out DIR   # read a finished job
    torchrun --nproc-per-node 2 -m captum_gradeclip analyze decomposition --out DIR

    captum-gradeclip analyze decomposition --coco-captions captions_val2017.json --images val2017/ \
        [--coco-instances instances_val2017.json] --model openai/clip-vit-base-patch16 --out DIR

A pairs line: ``{"image": "rel/path.jpg", "texts": ["a dog on a red sofa"], "phrases": ["a dog",
"a red sofa"]}`` (or ``"caption"`` for ``"texts"``; without ``"phrases"`` the package's phrase
miner finds them, and a caption it finds none in is an error row). The command writes ``DIR/job_pairs.jsonl``: the texts each image needs (caption,
phrases, caption without each phrase), which an ``explain-dataset --text-maps --pairs`` job must
hold to be read with ``--maps``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

from ..errors import CLIError
from ..options_cli import add_method_args, explainer_options
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


def _mined(caption: str, given: Any, where: str) -> Tuple[Optional[List[str]], Optional[str]]:
    """A pair's phrases: the given ones, checked (a bad one stops the command, naming ``where``),
    or, when none are given, the package's miner's (``finetune.phrases``; a caption that yields
    none, or whose mined phrases cannot be used, is an error row: ``(None, why)``)."""
    from ..finetune.phrases import mine_phrases
    from .decomposition import check_phrases

    if given is not None:
        try:
            return check_phrases(caption, given), None
        except ValueError as e:
            raise AnalysisError(f"{where}: {e}") from None
    phrases = mine_phrases(caption)
    if not phrases:
        return None, "the phrase miner found no adjective(s) + noun phrase in the caption: give \"phrases\""
    try:
        return check_phrases(caption, phrases), None
    except ValueError as e:
        return None, f"mined phrases {phrases}: {e}"


def _pair_specs(args: argparse.Namespace) -> Tuple[List[Any], List[dict]]:
    """The pairs file's pairs (one caption each: its ``"caption"``, or its one text; phrases that
    are parts of it, or mined), and the error rows of captions without usable phrases.

    Raises:
        AnalysisError: a bad line, naming the file and line.
    """
    from .decomposition import PairSpec

    specs, errors = [], []
    for ln in read_pairs(args.pairs, args.images):
        cap = ln.fields.get("caption")
        if not isinstance(cap, str):
            if len(ln.texts) != 1:
                raise AnalysisError(f"{ln.where()}: give one caption in \"texts\" (or \"caption\") and its "
                                    f"\"phrases\", got {len(ln.texts)} texts")
            cap = ln.texts[0]
        phrases, why = _mined(cap, ln.fields.get("phrases"), ln.where())
        if phrases is None:
            errors.append({"image": ln.image, "text": cap, "error": f"{ln.where()}: {why}"})
        else:
            specs.append(PairSpec(ln.image, cap, tuple(phrases)))
    return specs, errors


def _coco_specs(args: argparse.Namespace, clip) -> Tuple[List[Any], List[dict]]:
    """One pair per caption annotation of ``--coco-captions`` (phrases mined), the phrases' masks
    from ``--coco-instances`` where a phrase names an annotated category (computed when the pair
    is read), clustered by image; and the error rows."""
    from .coco import phrase_masks, read_captions, read_instances
    from .decomposition import PairSpec

    caps, errors = read_captions(args.coco_captions)
    inst = read_instances(args.coco_instances) if args.coco_instances else None
    by_name = {im.file_name: im for im in inst.images.values()} if inst else {}
    size = _input_size(clip) if inst else None
    specs = []
    for c in caps:
        phrases, why = _mined(c.caption, None, f"{args.coco_captions}: annotation {c.ann_id}")
        if phrases is None:
            errors.append({"image": c.image, "text": c.caption, "error": why})
            continue
        im = by_name.get(c.image)
        masks = None if im is None else (lambda p=tuple(phrases), im=im: phrase_masks(
            p, im, inst.objects.get(im.id, []), inst.categories, size))
        specs.append(PairSpec(c.image, c.caption, tuple(phrases), masks, cluster=c.image))
    return specs, errors


def _input_size(clip) -> Tuple[int, int]:
    """The model input's ``(H, W)`` (its preprocessing crops every image to it)."""
    from PIL import Image

    return tuple(clip.pixels([Image.new("RGB", (97, 89))]).shape[-2:])


def _pair_inputs(args: argparse.Namespace, clip, specs: List[Any]) -> Tuple[Any, List[Any], Callable, dict]:
    from .._io import open_image
    from ..scale import ImageFolderDataset, WorkItem
    from .decomposition import job_texts

    root = Path(args.images) if args.images else Path(args.pairs).parent
    texts: dict = {}
    for sp in specs:
        texts.setdefault(sp.image, []).extend(job_texts(sp.caption, sp.phrases))
    items = [WorkItem(k, tuple(dict.fromkeys(v))) for k, v in texts.items()]
    source = {"coco_captions": str(args.coco_captions)} if args.coco_captions else {"pairs": str(args.pairs)}
    return ImageFolderDataset(root, items, clip.pixels), specs, lambda k: open_image(str(root / k)), source


def cmd_decomposition(args: argparse.Namespace) -> None:
    """Compute (or read) the maps, then rows, summary and figure (rank 0)."""
    if min(args.batch_size, args.shard_size, args.scenes) < 1:
        raise CLIError(f"--batch-size, --shard-size and --scenes must be at least 1, got {args.batch_size}, "
                       f"{args.shard_size} and {args.scenes}")
    if args.coco_captions and (args.pairs or not args.images):
        raise CLIError("--coco-captions takes --images DIR (the folder of its file_names) and no --pairs")
    if args.coco_instances and not args.coco_captions:
        raise CLIError("--coco-instances (phrase masks) goes with --coco-captions")
    specs, errors = _pair_specs(args) if args.pairs else (None, [])  # a bad pairs file fails before the model loads
    clip = load_clip(args)
    if args.coco_captions:
        specs, errors = _coco_specs(args, clip)
    if specs is not None and not specs:
        raise AnalysisError(f"no pair has usable phrases ({len(errors)} error rows, the first: "
                            f"{errors[0]['error'] if errors else '-'})")
    data, specs, image_of, inputs = _pair_inputs(args, clip, specs) if specs is not None else _scene_inputs(args, clip)
    out = Path(args.out)
    maps = _maps(args, data, clip, out, inputs)
    if not is_main_process():
        return
    _finish(args, clip, specs, errors, maps, image_of, inputs, out)


def _maps(args: argparse.Namespace, data: Any, clip, out: Path, inputs: dict) -> Path:
    """The ``--maps`` job given, or the one computed into ``out/maps``."""
    if args.maps:
        maps = Path(args.maps)
        if not list(maps.glob("shard-*.parquet")):
            raise CLIError(f"--maps {maps} holds no shard-*.parquet: give a finished explain-dataset --text-maps job")
        return maps
    config = {"study": "decomposition", "model": args.open_clip or args.model or "ShapesCLIP (shipped)", **inputs}
    return run_maps_job(data, clip, out / "maps", batch_size=args.batch_size, shard_size=args.shard_size,
                        config=config, options=explainer_options(args, text_maps=True))


def _finish(args: argparse.Namespace, clip, specs: List[Any], errors: List[dict], maps: Path, image_of: Callable,
            inputs: dict, out: Path) -> None:
    """Rows, error rows, summary and figure from the maps job (rank 0)."""
    from ..scale import read_maps
    from .decomposition import from_maps, job_texts, summarize
    from .figures import decomposition_figure
    from .words import bpe_tokens, word_scheme

    out.mkdir(parents=True, exist_ok=True)
    (out / "job_pairs.jsonl").write_text("".join(json.dumps({"image": sp.image, "texts": job_texts(sp.caption, sp.phrases)})
                                                 + "\n" for sp in specs), encoding="utf-8")
    job = read_maps(maps, columns=["image", "text", "score", "map", "word_map"])
    rows, pair_errors, examples = from_maps(specs, job, lambda t: bpe_tokens(clip, t)[0], keep=args.figure_pairs,
                                            scheme=word_scheme(clip.tokenizer))
    errors = errors + _pair_errors(pair_errors, job_errors(maps))
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


def _pair_errors(pair_errors: List[Any], image_errors: List[dict]) -> List[dict]:
    """One error row per pair that could not be analysed: a pair whose image the engine could
    not read says why (the image's error), instead of a second row for the image."""
    by_image = {e["image"]: e["error"] for e in image_errors}
    rows = [{"image": e.image, "text": e.text, "error": by_image.get(e.image, e.error)} for e in pair_errors]
    named = {e.image for e in pair_errors}
    return rows + [e for e in image_errors if e["image"] not in named]


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
    add_method_args(p)
    add_maps_job_args(p, scenes=200)
    p.add_argument("--figure-pairs", type=int, default=4, help="pairs shown in the figure (default 4)")
    p.add_argument("--coco-captions", default=None, metavar="captions_val2017.json",
                   help="COCO captions (with --images DIR): one pair per caption, its phrases mined")
    p.add_argument("--coco-instances", default=None, metavar="instances_val2017.json",
                   help="with --coco-captions: phrase masks from the instances of the category a phrase names")
    p.set_defaults(func=cmd_decomposition)
