"""The ``segment`` command: open-vocabulary segmentation of an image folder from explanation maps.

    captum-gradeclip segment --images DIR --prompts classes.txt --out OUT [--masks MASKS] [--threshold 0.5]
    torchrun --nproc-per-node 2 -m captum_gradeclip segment --images DIR --prompts classes.txt --out OUT

Line ``k`` of ``--prompts`` (from 1) is label ``k`` of the masks; ``0`` is background.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, List, Sequence, Tuple

from ..errors import CLIError

class KeyedImages:
    """``[i] -> (key, (3, H, W) uint8, (key,))``: the image at its own size; the key travels as
    the text so that the explainer can name its PNGs and find its mask."""

    def __init__(self, keys: Sequence[str], open_image: Callable[[int], Any]) -> None:
        self.keys, self.open = list(keys), open_image
        self.items = [_Key(k) for k in self.keys]

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Tuple[str, Any, Tuple[str]]:
        from ..images import to_uint8

        return self.keys[i], to_uint8(self.open(i)), (self.keys[i],)


class _Key:
    def __init__(self, image: str) -> None:
        self.image = image


class _Opener:
    def __init__(self, root: Path, keys: List[str]) -> None:
        self.root, self.keys = root, keys

    def __call__(self, i: int) -> Any:
        from .._io import open_image

        return open_image(str(self.root / self.keys[i]))


def images_of(args: argparse.Namespace) -> KeyedImages:
    """The images ``--images`` (or ``--hf-dataset`` / ``--webdataset``) name, sorted by key."""
    from ..scale.sources import keyed_source, source_config

    config = source_config(vars(args), args.out)
    if config.given:
        keys, opener = keyed_source(config)
        return KeyedImages(keys, opener)
    if not args.images:
        raise CLIError("give --images DIR (or --hf-dataset / --webdataset)")
    from ..scale.data import scan_images

    keys = scan_images(Path(args.images))
    return KeyedImages(keys, _Opener(Path(args.images), keys))


def cmd_segment(args: argparse.Namespace) -> None:
    """Run the job on this rank; rank 0 writes ``OUT/scores.json`` (with ``--masks``) and prints."""
    from ..methods import build, resolve_layers
    from ..models import check_choice
    from ..options_cli import method_and_options
    from ..scale.data import read_prompts
    from ..scale.engine import JobSpec, run_job
    from ..text_checks import check_texts
    from ..scale.store import require_pyarrow
    from .job import SegmentExplainer, SegmentOptions, summarise

    require_pyarrow("segment")
    check_choice(args.model, args.open_clip)
    method, options = method_and_options(args)
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise CLIError(f"--threshold must be in [0, 1] (maps are normalised), got {args.threshold}")
    prompts = read_prompts(args.prompts)
    background = read_prompts(args.background_prompts) if args.background_prompts else []
    if len(prompts) > 254:
        raise CLIError(f"at most 254 prompts (labels are 8-bit PNGs), got {len(prompts)}")
    data = images_of(args)
    out = Path(args.out)
    from .._io import safe_names

    opts = SegmentOptions(tuple(prompts), tuple(background), args.threshold, args.normalise, out,
                          Path(args.masks) if args.masks else None, args.ignore_index, safe_names(data.keys, ".png"))
    config = {"model": {"hf": args.model, "open_clip": args.open_clip}, "images": data.keys,
              "method": method, "gradeclip": options.describe(), "map_input": args.map_input,
              "options": SegmentExplainer.describe(opts)}

    def load(device: Any) -> Tuple[KeyedImages, SegmentExplainer]:
        from ..images import map_input_for
        from ..models import load as load_model

        clip = load_model(args.model, args.open_clip)
        check_texts(clip, prompts + background, allow_unknown_words=args.allow_unknown_words)
        resolve_layers(options.layers, clip.image_layers)
        sim = clip.image_similarity(*clip.tokens(prompts + background))
        if hasattr(sim, "interpolate_pos_encoding"):
            sim.interpolate_pos_encoding = True
        return data, SegmentExplainer(build(method, clip, sim, options), map_input_for(clip, args.map_input), opts)

    summary = run_job(JobSpec(out, config, len(data), load, batch_size=args.batch_size, shard_size=args.shard_size,
                              num_workers=1, progress=not args.no_progress, device="cpu"))
    if not summary.is_main:
        return
    from ..scale.sources import remove_cache, source_config

    remove_cache(source_config(vars(args), out))
    print(f"{out}: {summary.images} images, {summary.errors} errors; label PNGs in {out / 'labels'}, "
          f"overlays in {out / 'overlays'}", file=sys.stderr)
    if opts.masks is not None:
        scores = summarise(out, prompts)
        (out / "scores.json").write_text(json.dumps(scores, indent=1))
        print(json.dumps({k: v for k, v in scores.items() if k != "per_class_iou"}))


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """Add the ``segment`` command to the ``captum-gradeclip`` subcommands ``sub``."""
    from ..options_cli import add_method_args, add_model_args

    p = sub.add_parser("segment", help="open-vocabulary segmentation from maps (label PNGs; mIoU with --masks)")
    p.add_argument("--images", default=None, help="image folder (recursive)")
    p.add_argument("--prompts", required=True, help="class prompts, one per line: line k is label k (0: background)")
    p.add_argument("--background-prompts", default=None, help="prompts that mark background when they win")
    p.add_argument("--threshold", type=float, default=0.5, help="background below this normalised map (default 0.5)")
    p.add_argument("--normalise", default="joint", choices=["joint", "per_prompt"])
    add_method_args(p)
    p.add_argument("--map-input", default="native", choices=["native", "model"],
                   help="maps at the image's resolution (resized to patch multiples) or at the model's input size")
    p.add_argument("--masks", default=None, help="index PNGs at the images' relative paths: score the labels")
    p.add_argument("--ignore-index", type=int, default=255, help="mask label not scored (default 255)")
    p.add_argument("--out", required=True)
    add_model_args(p, unknown_words=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--no-progress", action="store_true")
    from ..scale.sources import add_source_arguments

    add_source_arguments(p)
    p.set_defaults(func=cmd_segment)
