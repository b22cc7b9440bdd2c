"""``captum-gradeclip analyze concreteness``: a word's concreteness against how much CLIP uses it.

    captum-gradeclip analyze concreteness --out DIR                       # ShapesCLIP, held-out scenes
    captum-gradeclip analyze concreteness --pairs pairs.jsonl --model NAME --out DIR
    captum-gradeclip analyze concreteness --maps JOB --out DIR            # a finished explain-dataset --text-maps job
    captum-gradeclip analyze concreteness --coco-captions captions_val2017.json --images val2017/ \
        --model openai/clip-vit-base-patch16 --out DIR
    torchrun --nproc-per-node 2 -m captum_gradeclip analyze concreteness --pairs ... --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..errors import CLIError
from ..options_cli import add_method_args, explainer_options
from .common import (
    add_maps_job_args,
    add_model_args,
    is_main_process,
    job_errors,
    load_clip,
    run_maps_job,
    write_rows,
    write_summary,
)


def _items(pairs: List[Tuple[str, str]]) -> List[Any]:
    """Work items: each image once, with its captions (an image outside the folder: an error row)."""
    from ..scale import WorkItem

    texts: Dict[str, List[str]] = {}
    for image, text in pairs:
        texts.setdefault(image, []).append(text)
    out = []
    for k, v in texts.items():
        outside = Path(k).is_absolute() or ".." in Path(k).parts
        out.append(WorkItem(k, tuple(dict.fromkeys(v)), f"the image {k!r} is outside the --images folder" if outside
                            else None))
    return out


def _dataset(args: argparse.Namespace, clip) -> Tuple[Any, dict, List[dict]]:
    """The engine's dataset, the job's configuration and the inputs' error rows: the pairs file's
    images and captions (its ``"caption"``, else its ``"texts"``), ``--coco-captions``' captions
    (an image's captions in one item), or ``--scenes`` ShapesCLIP scenes (seeds from
    :data:`.concreteness.CONCRETENESS_SEED_START`) with their full captions."""
    from ..scale import ImageFolderDataset
    from .common import SceneDataset, read_pairs
    from .concreteness import CONCRETENESS_SEED_START

    if args.coco_captions:
        from .coco import read_captions

        caps, errors = read_captions(args.coco_captions)
        items = _items([(c.image, c.caption) for c in caps])
        return ImageFolderDataset(Path(args.images), items, clip.pixels), {"coco_captions": str(args.coco_captions)}, errors
    if args.pairs:
        root = Path(args.images) if args.images else Path(args.pairs).parent
        lines = read_pairs(args.pairs, args.images)
        pairs = [(ln.image, t) for ln in lines for t in ([ln.fields["caption"]] if isinstance(ln.fields.get("caption"), str)
                                                          else ln.texts)]
        return ImageFolderDataset(root, _items(pairs), clip.pixels), {"pairs": str(args.pairs)}, []
    seeds = range(CONCRETENESS_SEED_START, CONCRETENESS_SEED_START + args.scenes)
    return SceneDataset(clip, seeds, lambda sc: [sc.caption()]), {"scenes": [seeds.start, seeds.stop - 1]}, []


def cmd_concreteness(args: argparse.Namespace) -> None:
    """Compute (or read) the word maps, then rows, summary and figure (rank 0)."""
    if min(args.batch_size, args.shard_size, args.scenes) < 1:
        raise CLIError(f"--batch-size, --shard-size and --scenes must be at least 1, got {args.batch_size}, "
                       f"{args.shard_size} and {args.scenes}")
    from ..scale import read_maps
    from .concreteness import from_maps, load_ratings, summarize
    from .figures import concreteness_figure
    from .words import bpe_tokens, word_scheme

    if args.min_count < 1:
        raise CLIError(f"--min-count must be at least 1, got {args.min_count}")
    if args.coco_captions and (args.pairs or not args.images):
        raise CLIError("--coco-captions takes --images DIR (the folder of its file_names) and no --pairs")
    ratings = load_ratings()
    clip = load_clip(args)
    out = Path(args.out)
    input_errors: List[dict] = []
    if args.maps:
        maps = Path(args.maps)
        if not list(maps.glob("shard-*.parquet")):
            raise CLIError(f"--maps {maps} holds no shard-*.parquet: give a finished explain-dataset --text-maps job")
    else:
        dataset, inputs, input_errors = _dataset(args, clip)
        config = {"study": "concreteness", "model": args.open_clip or args.model or "ShapesCLIP (shipped)", **inputs}
        maps = run_maps_job(dataset, clip, out / "maps", batch_size=args.batch_size, shard_size=args.shard_size,
                               config=config, options=explainer_options(args, text_maps=True))
        if not is_main_process():
            return
    job = read_maps(maps, columns=["image", "text", "words", "word_map"])
    rows, errors = from_maps(job, lambda t: bpe_tokens(clip, t)[0], ratings, scheme=word_scheme(clip.tokenizer))
    errors = input_errors + [{"image": e.image, "text": e.text, "error": e.error} for e in errors] + job_errors(maps)
    write_rows(rows, out)
    (out / "errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors), encoding="utf-8")
    summary = summarize(rows, errors, min_count=args.min_count, n_boot=args.n_boot)
    summary["maps"] = str(maps)
    summary["model"] = args.open_clip or args.model or "ShapesCLIP (shipped)"
    write_summary(summary, out)
    concreteness_figure(summary, out / "concreteness.png")
    _report(summary, out)


def _report(summary: dict, out: Path) -> None:
    w, t = summary["word_level"], summary["token_level"]

    def r(c):
        return "n/a" if c is None else f"{c.mean:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
    print(f"{out}: {summary['captions']} captions, {summary['occurrences']} words, {summary['distinct_words']} distinct, "
          f"{summary['unrated']['distinct']} unrated, {summary['errors']} error rows; words with count >= "
          f"{summary['min_count']} (n = {w['n']}): Spearman {r(w['spearman'])}, Pearson {r(w['pearson'])}; "
          f"tokens (n = {t['n']}): Spearman {r(t['spearman'])}", file=sys.stderr)


def add_parser(asub: "argparse._SubParsersAction") -> None:
    """Register ``concreteness`` on ``analyze``'s subparsers."""
    p = asub.add_parser("concreteness", help="a word's concreteness against its Grad-ECLIP word importance")
    add_model_args(p)
    add_method_args(p)
    add_maps_job_args(p, scenes=300)
    p.add_argument("--min-count", type=int, default=5, help="words seen fewer times are left out of the statistics")
    p.add_argument("--coco-captions", default=None, metavar="captions_val2017.json",
                   help="COCO captions (with --images DIR) instead of --pairs: every caption of every image")
    p.set_defaults(func=cmd_concreteness)
