"""``captum-gradeclip finetune``: fine-grained fine-tuning with Grad-ECLIP's region–phrase pairs.

    captum-gradeclip finetune --out DIR [--ablations]                       # ShapesCLIP, evaluated
    captum-gradeclip finetune --out DIR --model NAME_OR_PATH --pairs FILE.jsonl [--separator " and "]
    captum-gradeclip finetune --out DIR --model NAME_OR_PATH --pairs FILE.jsonl --maps MINED_DIR
    captum-gradeclip finetune --out DIR --lora 16 --wise 0.5        # adapters only; weights pulled back half-way
    captum-gradeclip wise BASE TUNED --alpha 0.5 --out DIR           # WiSE-FT of any two checkpoints of one model
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m captum_gradeclip.cli finetune --out DIR

Writes the fine-tuned model and processor to ``DIR`` (``save_pretrained``), ``DIR/TRAINING.json``
(the training record) and, for ShapesCLIP, ``DIR/metrics.json`` with ``before`` and ``after``
(and ``ablations``: the same fine-tuning with true masks, uniform masks and GAME maps, each in
``DIR/ablations/NAME``). Every run resumes from its ``checkpoint.pt``; finished parts are kept.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import CLIError

#: The ablations of ``--ablations``: name -> mask kind.
ABLATIONS = {"oracle_gt_masks": "gt", "uniform_masks": "uniform", "game_maps": "game"}


def add_parser(sub: Any) -> None:
    """Register the ``finetune`` subcommand on the CLI's subparsers."""
    from .evaluate import EVAL_SEED_START
    from .train import MASK_KINDS, FinetuneConfig

    c = FinetuneConfig()
    f = sub.add_parser("finetune", help="fine-tune CLIP on Grad-ECLIP region-phrase pairs (ShapesCLIP by default)")
    f.add_argument("--out", required=True, type=Path, help="output folder (model, processor, metrics.json)")
    f.add_argument("--model", default=None, help="Hugging Face CLIP name or folder (default: the shipped ShapesCLIP)")
    f.add_argument("--pairs", default=None, type=Path, help="JSON lines {image, caption, phrases} (default: ShapesCLIP scenes)")
    f.add_argument("--separator", default=None, help="split captions without \"phrases\" on this, e.g. ' and '")
    f.add_argument("--maps", default=None, type=Path,
                   help="with --pairs: Grad-ECLIP maps mined beforehand by explain-dataset (its --out folder)")
    f.add_argument("--steps", type=int, default=c.steps)
    f.add_argument("--batch", type=int, default=c.batch, help="global batch (split over processes)")
    f.add_argument("--lr", type=float, default=c.lr)
    f.add_argument("--seed", type=int, default=c.seed)
    f.add_argument("--masks", default=c.masks, metavar="{" + ",".join(MASK_KINDS) + "}",
                   help=f"where region masks come from (default: {c.masks})")
    f.add_argument("--captions", choices=("mixed", "all"), default=c.captions,
                   help="ShapesCLIP captions name 1, 2 or all objects (mixed, as its training did) or all")
    f.add_argument("--ablations", action="store_true", help="also fine-tune with true, uniform and GAME masks")
    f.add_argument("--ablation-steps", type=int, default=None, help="steps of each ablation (default: --steps)")
    f.add_argument("--eval-scenes", type=int, default=500, help=f"held-out scenes (seeds {EVAL_SEED_START}...); 0: no evaluation")
    f.add_argument("--save-every", type=int, default=c.save_every)
    f.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / processes)")
    f.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # interruption, for tests
    f.add_argument("--lora", type=int, default=c.lora, metavar="RANK",
                   help="train rank-RANK adapters on the attention projections only (peft: the 'lora' extra), "
                        "merged into the weights on save; 0: the whole model (default)")
    f.add_argument("--wise", type=float, default=c.wise, metavar="ALPHA",
                   help=f"save (1 - ALPHA) * initial + ALPHA * tuned weights (WiSE-FT; 1: the tuned model; default {c.wise})")
    _add_variant_args(f, c)
    f.set_defaults(func=cmd_finetune)
    w = sub.add_parser("wise", help="interpolate two checkpoints of one architecture: (1 - ALPHA) * BASE + ALPHA * TUNED")
    w.add_argument("base", help="the model before fine-tuning (a save_pretrained folder or a model name)")
    w.add_argument("tuned", help="the fine-tuned model (same architecture), e.g. a finetune --out folder")
    w.add_argument("--alpha", type=float, required=True, help="in [0, 1]: 0 gives BASE, 1 gives TUNED")
    w.add_argument("--out", required=True, type=Path, help="output folder (model, TUNED's processor files, WISE.json)")
    w.set_defaults(func=cmd_wise)


def cmd_wise(args: argparse.Namespace) -> None:
    """``captum-gradeclip wise BASE TUNED --alpha A --out DIR``: :func:`~.wise.wise_folders`."""
    from .._io import check_output_dir
    from .wise import check_alpha, wise_folders

    try:
        check_alpha(args.alpha, "--alpha")
    except ValueError as e:
        raise CLIError(str(e)) from None
    check_output_dir(str(args.out), flag="--out")
    try:
        record = wise_folders(args.base, args.tuned, args.alpha, args.out)
    except ValueError as e:
        raise CLIError(str(e)) from None
    print(json.dumps(record, indent=2))


def _add_variant_args(f: Any, c: Any) -> None:
    """The loss variants and the phrase source (benchmarks/finetune_ablation.py measures them)."""
    from .data import PHRASE_MODES
    from .loss import REGION_FORMS

    f.add_argument("--phrases", choices=PHRASE_MODES, default="given",
                   help="with --pairs: auto mines adjective(s) + noun phrases of captions without \"phrases\"")
    f.add_argument("--region-weight", type=float, default=c.region_weight)
    f.add_argument("--confidence", action=argparse.BooleanOptionalAction, default=c.confidence,
                   help="weight each region-phrase term by its map's maximum")
    f.add_argument("--focal-gamma", type=float, default=c.focal_gamma, help="focal region-phrase loss (0: cross-entropy)")
    f.add_argument("--region-loss", choices=REGION_FORMS, default=c.region_form,
                   help="region-phrase term: cross-entropy over the batch's phrases, or ShapesCLIP's sigmoid loss")
    f.add_argument("--momentum", type=float, default=c.momentum,
                   help="EMA decay of the momentum copy that anchors the image-caption term (0: none)")
    f.add_argument("--distill", type=float, default=c.distill, help="the momentum copy's share of the image-caption targets")
    f.add_argument("--freeze-projection", action=argparse.BooleanOptionalAction, default=c.freeze_projection,
                   help="keep visual_projection fixed")


def _variant_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The :class:`~.train.FinetuneConfig` fields of :func:`_add_variant_args`' flags."""
    return dict(region_weight=args.region_weight, confidence=args.confidence, focal_gamma=args.focal_gamma,
                region_form=args.region_loss, momentum=args.momentum, distill=args.distill,
                freeze_projection=args.freeze_projection, lora=args.lora, wise=args.wise)


def _load(args: argparse.Namespace) -> Any:
    from ..models import load_hf, load_shapes

    clip = load_shapes() if args.model is None else load_hf(args.model)
    if clip.family != "hf":  # pragma: no cover - load_hf only loads Hugging Face models
        raise CLIError("finetune needs a Hugging Face CLIPModel")
    return clip.model, clip.preprocess


def _record(args: argparse.Namespace, cfg: Any, run: Dict[str, Any], init: Optional[Path]) -> Dict[str, Any]:
    import torch

    from .data import FINETUNE_SEED_OFFSET

    stages = []
    if init is not None and (init / "TRAINING.json").is_file():
        stages = json.loads((init / "TRAINING.json").read_text()).get("stages", [])
    stages.append({"command": "captum-gradeclip finetune " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("func", "cmd", "out", "stop_after", "ablations") and v is not None) + " --out DIR",
        "config": asdict(cfg), "torch": torch.__version__,
        "seconds": round(sum(r["seconds"] for r in run.get("runs", [])) or run["seconds"], 1),
        "data_seeds": "pairs file" if args.pairs else f"ShapesCLIP scenes {FINETUNE_SEED_OFFSET} + seed * 10**9 + step * batch + i",
        "log": run["log"], "runs": run.get("runs", [])})
    return {"stages": stages}


def _run(args: argparse.Namespace, cfg: Any, out: Path, d: Any, save: bool) -> Any:
    """Fine-tune a fresh copy of the initial model with ``cfg`` into ``out``; returns the model."""
    import sys

    from .data import PairsSource, ShapesSource, attach_mined_maps, read_pairs, unphrased
    from .train import finetune

    model, processor = _load(args)
    if args.pairs is None:
        if args.maps is not None:
            raise CLIError("--maps needs --pairs (ShapesCLIP scenes are mined during training)")
        if args.phrases == "auto":
            raise CLIError("--phrases auto needs --pairs (ShapesCLIP scenes come with their phrases)")
        source: Any = ShapesSource(cfg.seed, cfg.captions)
    else:
        samples = read_pairs(args.pairs, args.separator, args.phrases)
        none = unphrased(samples)
        if none and d.main:
            print(f"{len(none)} of {len(samples)} captions yielded no phrase (kept for the image-caption term "
                  f"only): {', '.join(none[:10])}{' ...' if len(none) > 10 else ''}", file=sys.stderr)
        if args.maps is not None:
            attach_mined_maps(samples, args.maps)
        source = PairsSource(samples, cfg.seed)
    run = finetune(model, processor, source, cfg, out, d=d, stop_after=args.stop_after)
    if save and d.main and (args.stop_after is None or args.stop_after >= cfg.steps):
        model.eval()
        model.save_pretrained(out)
        processor.save_pretrained(out)
        from ..shapes.model import WEIGHTS_DIR

        init = WEIGHTS_DIR if args.model is None else Path(args.model)
        (out / "TRAINING.json").write_text(json.dumps(_record(args, cfg, run, init), indent=2) + "\n")
    return model.eval(), processor


def _evaluate(model: Any, processor: Any, args: argparse.Namespace) -> Dict[str, float]:
    from .evaluate import evaluate_finetuning

    return evaluate_finetuning(model, processor, n=args.eval_scenes, n_calibration=min(200, args.eval_scenes))


def _write(metrics: Dict[str, Any], out: Path, t0: float, d: Any) -> None:
    """(Re)write ``out/metrics.json`` (main process), so that finished parts survive an interruption."""
    if d.main:
        metrics["seconds"] = round(time.time() - t0, 1)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def check_flags(args: argparse.Namespace) -> None:
    """The flags, before any work (one line each).

    Raises:
        CLIError: a count below 1 (or below 0 for ``--eval-scenes``), a learning rate that is
            not a positive finite number, ``--out`` a file.
    """
    import math

    from .._io import check_output_dir

    for flag, value, least in (("--steps", args.steps, 1), ("--batch", args.batch, 1), ("--save-every", args.save_every, 1),
                               ("--threads", args.threads, 1), ("--ablation-steps", args.ablation_steps, 1),
                               ("--eval-scenes", args.eval_scenes, 0)):
        if value is not None and value < least:
            raise CLIError(f"{flag} must be >= {least}, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CLIError(f"--lr must be a positive finite number, got {args.lr}")
    _check_methods(args)
    check_output_dir(str(args.out), flag="--out")
    if args.pairs is not None and not args.pairs.is_file():
        raise CLIError(f"--pairs {args.pairs}: no such file")


def _check_methods(args: argparse.Namespace) -> None:
    """``--masks``, ``--lora``, ``--wise`` (one line each; the old ``--masks gradeclip`` names the new name)."""
    import math

    from .teacher import RENAMED
    from .train import MASK_KINDS

    if args.masks in RENAMED:
        raise CLIError(f"--masks {args.masks} is now called --masks {RENAMED[args.masks]}")
    if args.masks not in MASK_KINDS:
        raise CLIError(f"--masks must be one of {', '.join(MASK_KINDS)}, got {args.masks}")
    if args.lora < 0:
        raise CLIError(f"--lora must be >= 0 (0: no adapters), got {args.lora}")
    if not (math.isfinite(args.wise) and 0 <= args.wise <= 1):
        raise CLIError(f"--wise must be in [0, 1] (0: the initial model, 1: the tuned one), got {args.wise}")
    if args.lora:
        from .lora import _peft

        try:
            _peft()
        except ValueError as e:
            raise CLIError(str(e)) from None


def cmd_finetune(args: argparse.Namespace) -> None:
    """Train (and, for ShapesCLIP, evaluate before / after and the ablations); see the module
    docstring. Ctrl-C: exit status 130 and one line (the last checkpoint is kept)."""
    from .._io import interrupted

    check_flags(args)
    try:
        _cmd_finetune(args)
    except KeyboardInterrupt:
        raise interrupted(f"{args.out}: the last checkpoint.pt (written every --save-every steps) and finished parts "
                          "are kept; run the same command to resume") from None


def _cmd_finetune(args: argparse.Namespace) -> None:
    import torch

    from ..distributed import session
    from .train import FinetuneConfig

    with session() as d:  # the process group of torchrun's processes, closed in step after success
        torch.set_num_threads(args.threads or max(1, (torch.get_num_threads()) // d.world))
        cfg = FinetuneConfig(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, masks=args.masks,
                             save_every=args.save_every, captions=args.captions, **_variant_config(args))
        try:
            _train_and_evaluate(args, cfg, d)
        except ValueError as e:
            raise CLIError(str(e)) from None


def _train_and_evaluate(args: argparse.Namespace, cfg: Any, d: Any) -> None:
    """The fine-tuning, then (ShapesCLIP) ``metrics.json`` before / after and the ablations."""
    evaluate = args.pairs is None and args.eval_scenes > 0
    t0 = time.time()
    model, processor = _run(args, cfg, args.out, d, save=True)
    if args.stop_after is not None and args.stop_after < cfg.steps:
        return
    metrics: Dict[str, Any] = {"config": asdict(cfg)}
    if evaluate and d.main:
        metrics["before"] = _evaluate(*_load(args), args)
        metrics["after"] = _evaluate(model, processor, args)
    _write(metrics, args.out, t0, d)
    if args.ablations:
        metrics["ablations"] = {}
        short = replace(cfg, steps=args.ablation_steps or cfg.steps)
        for name, kind in ABLATIONS.items():
            m, p = _run(args, replace(short, masks=kind), args.out / "ablations" / name, d, save=False)
            if evaluate and d.main:
                metrics["ablations"][name] = {"steps": short.steps, **_evaluate(m, p, args)}
            _write(metrics, args.out, t0, d)
    if d.main:
        print(json.dumps({k: metrics[k] for k in ("before", "after", "ablations") if k in metrics}, indent=2))
