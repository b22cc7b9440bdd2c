"""The ``explain-dataset`` command: its flags, the job's configuration, and the run.

    captum-gradeclip explain-dataset --images DIR --prompts prompts.txt --out OUT
    torchrun --nproc-per-node 2 -m captum_gradeclip explain-dataset --images DIR --pairs pairs.jsonl --out OUT
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from ..errors import CLIError

if TYPE_CHECKING:  # pragma: no cover
    from .explain import ExplainerOptions


def work_items(args: argparse.Namespace, source: Any = None) -> List[Any]:
    """The sorted work list of ``--images`` with ``--prompts``, ``--pairs`` or ``--class-prompts``
    (or of the opened ``--hf-dataset`` / ``--webdataset`` ``source``).

    Raises:
        CLIError: see :mod:`.data`.
    """
    from .data import class_items, pair_items, prompt_items, read_prompts

    if source is not None:  # datasets as users store them: sources.py
        from .sources import source_items

        return source_items(source, prompts=args.prompts, class_prompts=args.class_prompts, pairs=args.pairs)
    if not args.images or not (args.prompts or args.pairs or args.class_prompts):
        raise CLIError("give --images DIR (or --hf-dataset / --webdataset) and --prompts, --pairs or --class-prompts")
    root = Path(args.images)
    if args.pairs:
        return pair_items(root, args.pairs, allow_outside=args.allow_outside_images)
    if args.class_prompts:
        return class_items(root, args.class_prompts)
    return prompt_items(root, read_prompts(args.prompts))


def method_options(args: argparse.Namespace) -> "ExplainerOptions":
    """The :class:`~.explain.ExplainerOptions` the flags choose (``--method`` and Grad-ECLIP's
    options parsed as in every command: :mod:`captum_gradeclip.options_cli`)."""
    from ..options_cli import explainer_options

    return explainer_options(args, text_maps=args.text_maps, text_chunk=args.text_chunk)


def job_description(args: argparse.Namespace, items: List[Any]) -> Dict[str, Any]:
    """What identifies the job (besides its sizes): the model, the method, the work list's hash."""
    digest = hashlib.sha256(json.dumps([[it.image, list(it.texts)] for it in items]).encode()).hexdigest()
    inputs = "pairs" if args.pairs else "class-prompts" if args.class_prompts else "prompts"
    outside = {"allow_outside_images": True} if args.pairs and args.allow_outside_images else {}
    return {"model": {"hf": args.model, "open_clip": args.open_clip,
                      "name": args.open_clip or args.model or "ShapesCLIP (shipped)"},
            "explainer": method_options(args).describe(),
            "inputs": {"kind": inputs, "work_list_sha256": digest,
                       "texts": sum(len(it.texts) for it in items), **outside}}


def check_flags(args: argparse.Namespace) -> None:
    """The flags that need no model, before any work.

    Raises:
        CLIError: a size below 1, negative workers, a device this machine does not have.
    """
    from .. import distributed as dist
    from ..models import check_choice

    check_choice(args.model, args.open_clip)
    method_options(args)  # the method flags (CLIError for a bad --layers, a Grad-ECLIP flag with another method)
    if min(args.batch_size, args.shard_size, args.text_chunk) < 1:
        raise CLIError(f"--batch-size, --shard-size and --text-chunk must be >= 1, got {args.batch_size}, "
                       f"{args.shard_size} and {args.text_chunk}")
    if args.workers < 0:
        raise CLIError(f"--workers must be >= 0 (0: decode in the main process), got {args.workers}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out {args.out} is a file, not a folder")
    try:
        dist.check_device(args.device)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _load_explainer(args: argparse.Namespace, device: str) -> Any:
    """The model on ``device`` and its :class:`~.explain.CLIPExplainer`.

    Raises:
        InputError: the model does not load, or ``--layers`` out of its range.
    """
    from ..methods import resolve_layers
    from ..models import load
    from .explain import CLIPExplainer

    options = method_options(args)
    clip = load(args.model, args.open_clip)
    clip.model.to(device)
    resolve_layers(options.gradeclip.layers, clip.image_layers)  # InputError naming the range
    return clip, CLIPExplainer(clip, device=device, options=options)


def cmd_explain_dataset(args: argparse.Namespace) -> None:
    """Run the job on this rank; rank 0 prints the summary. Ctrl-C: exit status 130 and one line."""
    from .._io import interrupted

    out = Path(args.out)
    try:
        _explain_dataset(args, out)
    except KeyboardInterrupt:
        kept = len(list(out.glob("shard-*.parquet"))) if out.is_dir() else 0
        raise interrupted(f"{out}: {kept} finished shard(s) kept (the shard being written is dropped); "
                          "run the same command to resume") from None


def _explain_dataset(args: argparse.Namespace, out: Path) -> None:
    from .engine import JobSpec, run_job
    from .store import require_pyarrow

    require_pyarrow("explain-dataset")
    check_flags(args)
    from .sources import open_source, remove_cache, source_config

    config = source_config(vars(args), out)
    source = open_source(config) if config.given else None
    items = work_items(args, source)

    def load(device: Any) -> Any:
        from .data import ImageFolderDataset
        from .sources import SourceDataset

        clip, explainer = _load_explainer(args, device)
        if source is not None:
            return SourceDataset(source, items, clip.pixels), explainer
        return ImageFolderDataset(Path(args.images), items, clip.pixels), explainer

    summary = run_job(JobSpec(out, job_description(args, items), len(items), load, batch_size=args.batch_size,
                              shard_size=args.shard_size, num_workers=args.workers, progress=not args.no_progress,
                              device=args.device))
    if summary.is_main:
        remove_cache(config)
        too_long = summary.texts_too_long
        print(f"{out}: {summary.images} images, {summary.pairs} pairs, {summary.errors} error{'' if summary.errors == 1 else 's'}"
              f"{f' ({too_long} texts longer than the model context)' if too_long else ''}; "
              f"this run: {summary.images_this_run} images in {summary.wall_s:.1f} s "
              f"({summary.images_per_s:.2f} images/s on {summary.world_size} process(es)), "
              f"{summary.skipped_shards} shard(s) already done", file=sys.stderr)


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """Add the ``explain-dataset`` command to the ``captum-gradeclip`` subcommands ``sub``."""
    from ..options_cli import add_method_args, add_model_args

    p = sub.add_parser("explain-dataset", help="explain a whole image folder into Parquet shards "
                       "(sharded over torchrun's processes, resumable)")
    p.add_argument("--images", default=None, help="image folder (recursive: .jpg .jpeg .png .webp .bmp)")
    texts = p.add_mutually_exclusive_group()
    texts.add_argument("--prompts", help="text file: every image against every line")
    texts.add_argument("--pairs", help='JSON lines {"image": "rel/path.jpg", "texts": [...]}: per-image texts')
    texts.add_argument("--class-prompts", metavar="TEMPLATE",
                       help='class-folder tree (ROOT/CLASS/IMAGE): every image against "TEMPLATE" of each class, '
                            'e.g. "a photo of a {}."')
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--allow-outside-images", action="store_true",
                   help="with --pairs: read images the pairs file names outside --images (absolute or ../ paths)")
    add_model_args(p, unknown_words=True)
    add_method_args(p)
    p.add_argument("--text-maps", action="store_true", help="also write word maps (words, word_map)")
    p.add_argument("--text-chunk", type=int, default=64,
                   help="texts explained per backward (default 64): bounds memory for many prompts")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--shard-size", type=int, default=256, help="images per shard (default 256)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images (default 2)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda:0, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .sources import add_source_arguments

    add_source_arguments(p)
    p.set_defaults(func=cmd_explain_dataset)
