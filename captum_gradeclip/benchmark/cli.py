"""The ``benchmark`` command: its flags, their checks, and which protocol runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Tuple

from ..errors import CLIError
from .config import FaithfulnessConfig, FolderConfig, ShapesConfig

_F, _S = FaithfulnessConfig(), ShapesConfig()


def _check(args: argparse.Namespace) -> None:
    """Fill in ``--n`` and reject flags that do not go together.

    Raises:
        CLIError: ``--model`` with ``--open-clip``, ``--open-clip`` without a folder, only one
            of ``--images`` and ``--prompts``, a number out of range (``--step`` outside
            ``(0, 1]``, ``--n`` or ``--batch`` below 1, ``--examples`` below 0), or an
            ``--out-dir`` that cannot be written.
    """
    from .._io import check_output_dir
    from ..models import check_choice

    for flag, v, lo in (("--n", args.n, 1), ("--batch", args.batch, 1), ("--examples", args.examples, 0)):
        if v is not None and v < lo:
            raise CLIError(f"{flag} must be >= {lo}, got {v}")
    if not 0 < args.step <= 1:  # also NaN
        raise CLIError(f"--step must be a share of the pixels in (0, 1], e.g. 0.01, got {args.step}")
    if args.n is None:
        args.n = 12 if args.quick else 100
    check_output_dir(args.out_dir)
    check_choice(args.model, args.open_clip)
    if args.protocol == "grad-eclip":  # the authors' ImageNet protocol: imagenet.py checks its inputs
        return
    if args.open_clip and not args.images:
        raise CLIError("--open-clip runs the folder benchmark: give --images and --prompts too")
    if (args.images or args.prompts) and not (args.images and args.prompts):
        raise CLIError("--images and --prompts go together")


def _methods(args: argparse.Namespace) -> Optional[Tuple[str, ...]]:
    """``--methods`` as exact names (checked before any work: one line listing the names)."""
    from .methods import method_keys

    if args.methods is None:
        return None
    keys = method_keys()
    unknown = [m for m in args.methods if m not in keys]
    if unknown:
        raise CLIError(f"--methods {unknown[0]!r} names no method; the methods are: {', '.join(keys)}")
    return tuple(dict.fromkeys(args.methods))


def shapes_config(args: argparse.Namespace) -> ShapesConfig:
    """The ShapesCLIP protocol's settings from the checked flags."""
    return ShapesConfig(n=args.n, model=args.model, methods=_methods(args), batch=args.batch, examples=args.examples,
                        word_replacement=args.word_replacement,
                        faithfulness=FaithfulnessConfig(step=args.step, replacement=args.replacement))


def folder_config(args: argparse.Namespace) -> FolderConfig:
    """The folder protocol's settings from the checked flags."""
    return FolderConfig(images=args.images, prompts=args.prompts, out_dir=args.out_dir, n=args.n, model=args.model,
                        open_clip=args.open_clip, methods=_methods(args), batch=args.batch,
                        faithfulness=FaithfulnessConfig(step=args.step, replacement=args.replacement))


def cmd_benchmark(args: argparse.Namespace) -> None:
    """Run the folder protocol (``--images``, ``--prompts``) or the ShapesCLIP one, and write
    ``benchmark.json``, ``.md`` and ``.png`` to ``--out-dir``."""
    from .folder import run_folder
    from .memory import add_peak_memory
    from .protocols import run_shapes
    from .report import save

    _check(args)
    if args.protocol == "grad-eclip":
        from .imagenet import cmd_protocol

        return cmd_protocol(args)
    if args.images:
        res = run_folder(folder_config(args))
        if res is None:  # a rank other than 0 under torchrun: rank 0 reports
            return
    else:
        res = run_shapes(shapes_config(args))
        if not args.no_memory:
            add_peak_memory(res, args.model)
    out = Path(args.out_dir)
    md = save(res, out)
    print()
    print(md)
    if res.get("skipped"):
        print(f"\nskipped {len(res['skipped'])} unreadable image(s): {', '.join(res['skipped'])}")
    print(f"\nwrote {out / 'benchmark.json'}, {out / 'benchmark.md'}, {out / 'benchmark.png'}")


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """Add the ``benchmark`` command to the ``captum-gradeclip`` subcommands ``sub``."""
    b = sub.add_parser("benchmark", help="compare Grad-ECLIP with baselines (ShapesCLIP, or any CLIP on images)")
    b.add_argument("--quick", action="store_true", help="12 scenes: a few minutes on 2 CPU cores")
    b.add_argument("--n", type=int, default=None, help="scenes (ShapesCLIP) or images (folder); default 100")
    b.add_argument("--step", type=float, default=_F.step, help="share of pixels per deletion/insertion step")
    b.add_argument("--replacement", default=_F.replacement, choices=["noise", "black", "blur", "mean"])
    b.add_argument("--word-replacement", default=_S.word_replacement, help="token replacing deleted words")
    from ..options_cli import add_model_args
    from .methods import method_keys

    keys = method_keys()
    b.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help=f"only these methods, by name (default: all): {', '.join(keys)}")
    b.add_argument("--batch", type=int, default=_S.batch, help="examples explained per call")
    b.add_argument("--examples", type=int, default=_S.examples)
    add_model_args(b)
    b.add_argument("--images", default=None, help="folder of images (faithfulness only)")
    b.add_argument("--prompts", default=None, help="text file, one prompt per line")
    b.add_argument("--protocol", default="folder", choices=["folder", "grad-eclip"],
                   help="grad-eclip: the authors' ImageNet deletion/insertion protocol on a DIR/CLASS/IMAGE tree")
    b.add_argument("--target", default="gt", choices=["gt", "pred"], help="grad-eclip: explain the label or the prediction")
    b.add_argument("--class-names", default=None, help="grad-eclip: file (one per class, label order), 'imagenet' "
                   "(open_clip's) or, by default, the folder names")
    b.add_argument("--templates", default="imagenet", help="grad-eclip: 'imagenet' (open_clip's 80), a file, or one "
                   "template with {}")
    b.add_argument("--map-input", default="native", choices=["native", "model"],
                   help="grad-eclip: maps at the image's resolution (the authors') or at the model's input size")
    b.add_argument("--out-dir", default="benchmark_out")
    from ..scale.sources import add_source_arguments

    add_source_arguments(b)  # --hf-dataset / --webdataset for --protocol grad-eclip
    b.add_argument("--no-memory", action="store_true", help="skip the per-method memory subprocesses")
    b.set_defaults(func=cmd_benchmark)
