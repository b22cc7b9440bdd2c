"""Train ShapesCLIP from scratch on synthetic scenes (CPU, seeded).

    python -m captum_gradeclip.shapes.train --steps 4000 --seed 0 --out captum_gradeclip/shapes/weights

Scenes are generated on the fly (training seeds start at :data:`TRAIN_SEED_OFFSET`; evaluation
uses seeds below it, so evaluation scenes are never seen in training). The objective is CLIP's
symmetric InfoNCE on (image, caption) pairs, where a caption names one, two or all objects of
the scene, plus a SigLIP-style sigmoid loss of every image against all 48 single-object prompts
(present objects are positives) so that absent look-alike objects act as hard negatives. Only the
``CLIPModel`` is saved; the sigmoid loss' scale and bias are training-only parameters.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F

from .model import CLIP_MEAN, CLIP_STD, WEIGHTS_DIR, build_config, build_processor
from .scenes import all_prompts, render_scene

if TYPE_CHECKING:  # pragma: no cover
    from transformers import CLIPModel

TRAIN_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class TrainConfig:
    """ShapesCLIP training's settings (the flags of ``python -m captum_gradeclip.shapes.train``).

    Attributes:
        steps: optimisation steps. batch: scenes per step. lr: AdamW's peak learning rate.
        seed: the seed of the scenes, the captions and the weights. threads: torch threads.
        out: the checkpoint folder written. init: a checkpoint to continue from (``None``: fresh).
    """

    steps: int = 4000
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    out: Path = WEIGHTS_DIR
    init: Optional[Path] = None


class Schedule(Protocol):
    """What :func:`make_optimizer` reads: the peak learning rate and the number of steps
    (:class:`TrainConfig` has them, as ``finetune``'s config does)."""

    lr: float
    steps: int


def scenes_to_pixels(images: Sequence[Any]) -> torch.Tensor:
    """PIL 64 px images -> normalised ``(N, 3, 64, 64)`` float tensor (the processor's result)."""
    import numpy as np

    x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def _caption(scene, rng: random.Random) -> str:
    k = len(scene.objects)
    r = rng.random()
    if k == 1 or r < 0.5:
        return scene.objects[rng.randrange(k)].prompt
    if r < 0.8:
        return scene.caption(rng.sample(range(k), 2))
    order = list(range(k))
    rng.shuffle(order)
    return scene.caption(order)


def _parse(argv: Optional[List[str]]) -> TrainConfig:
    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--out", type=Path, default=d.out)
    ap.add_argument("--init", type=Path, default=d.init,
                    help="continue from this checkpoint (its TRAINING.json chain is kept)")
    return TrainConfig(**vars(ap.parse_args(argv)))


def _build_model(tok, init: Optional[Path]) -> "CLIPModel":
    """A fresh ShapesCLIP (or the checkpoint ``init``) in train mode, its text tower on sdpa."""
    from transformers import CLIPModel

    config = build_config(len(tok), tok.eos_token_id, tok.bos_token_id)
    config.text_config._attn_implementation = "sdpa"
    model = CLIPModel(config) if init is None else CLIPModel.from_pretrained(init, local_files_only=True)
    model.config.text_config._attn_implementation = "sdpa"
    return model.train()


def make_optimizer(params: List[torch.nn.Parameter], cfg: Schedule) -> Tuple[torch.optim.Optimizer, Any]:
    """AdamW at ``cfg.lr`` (weight decay on matrices only) and a linear-warm-up cosine schedule
    over ``cfg.steps``: ``(optimizer, LambdaLR scheduler)``."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    return opt, sched


def _batch(step: int, cfg: TrainConfig, tok, rng: random.Random) -> Tuple[torch.Tensor, Any, torch.Tensor]:
    """Training batch ``step``: ``(pixels (B, 3, 64, 64), tokenized captions (B, L), labels (B, P))``
    where ``labels[i, p]`` is 1 for the prompts ``p`` of the objects in scene ``i``."""
    prompt_index = {p: i for i, p in enumerate(all_prompts())}
    base = TRAIN_SEED_OFFSET + cfg.seed * 100_000_000 + step * cfg.batch
    scenes = [render_scene(seed=base + i) for i in range(cfg.batch)]
    pixels = scenes_to_pixels([s.image for s in scenes])
    caps = tok([_caption(s, rng) for s in scenes], padding=True, return_tensors="pt")
    labels = torch.zeros(cfg.batch, len(prompt_index))
    for i, s in enumerate(scenes):
        for p in s.prompts:
            labels[i, prompt_index[p]] = 1.0
    return pixels, caps, labels


def _losses(model, pixels: torch.Tensor, caps, prompts, labels: torch.Tensor,
            sig_scale: torch.Tensor, sig_bias: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, nce, sig)``: symmetric InfoNCE on (image, caption) pairs plus 10 x the sigmoid loss
    of every image against all single-object ``prompts`` (``labels (B, P)`` its positives)."""
    n = len(pixels)
    img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    txt = F.normalize(model.get_text_features(**caps).pooler_output, dim=-1)
    pro = F.normalize(model.get_text_features(**prompts).pooler_output, dim=-1)
    logits = model.logit_scale.exp() * img @ txt.t()
    target = torch.arange(n)
    # captions shared by several images are positives for each of them
    same = torch.tensor([[a == b for b in caps.input_ids.tolist()] for a in caps.input_ids.tolist()])
    logits_t = logits.masked_fill(same & ~torch.eye(n, dtype=torch.bool), -1e4)
    nce = 0.5 * (F.cross_entropy(logits_t, target) + F.cross_entropy(logits_t.t(), target))
    sig = F.binary_cross_entropy_with_logits(sig_scale.exp() * img @ pro.t() + sig_bias, labels)
    return nce + 10 * sig, nce, sig


def _train(model, tok, cfg: TrainConfig, rng: random.Random) -> float:
    """Run ``cfg.steps`` optimisation steps, logging every 50; returns the start time."""
    prompts = tok(all_prompts(), padding=True, return_tensors="pt")
    sig_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    sig_bias = torch.nn.Parameter(torch.tensor(-5.0))
    params = list(model.parameters()) + [sig_scale, sig_bias]
    opt, sched = make_optimizer(params, cfg)
    t0 = time.time()
    for step in range(cfg.steps):
        pixels, caps, labels = _batch(step, cfg, tok, rng)
        loss, nce, sig = _losses(model, pixels, caps, prompts, labels, sig_scale, sig_bias)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == cfg.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  nce {nce.item():.4f}  sig {sig.item():.4f}"
                  f"  scale {model.logit_scale.exp().item():.1f}  {time.time() - t0:.0f}s", flush=True)
    return t0


def _save(model, processor, cfg: TrainConfig, t0: float) -> None:
    """Save the model and processor to ``cfg.out`` with ``TRAINING.json``: the commands of every
    training stage (those of ``cfg.init`` first)."""
    model.eval()
    cfg.out.mkdir(parents=True, exist_ok=True)
    model.config.text_config._attn_implementation = None
    model.save_pretrained(cfg.out, safe_serialization=True)
    processor.save_pretrained(cfg.out)
    history = []
    if cfg.init is not None and (cfg.init / "TRAINING.json").is_file():
        history = json.loads((cfg.init / "TRAINING.json").read_text())["stages"]
    history.append({
        "command": "python -m captum_gradeclip.shapes.train " + " ".join(
            f"--{k} {v}" for k, v in [("steps", cfg.steps), ("batch", cfg.batch), ("lr", cfg.lr),
                                      ("seed", cfg.seed), ("threads", cfg.threads), ("init", cfg.init)]
            if v is not None),
        "torch": torch.__version__,
        "seconds": round(time.time() - t0),
    })
    (cfg.out / "TRAINING.json").write_text(json.dumps(
        {"stages": history, "train_seed_offset": TRAIN_SEED_OFFSET}, indent=2) + "\n")


def main(argv: Optional[List[str]] = None) -> None:
    """Train and save ShapesCLIP (see the module docstring for the flags)."""
    cfg = _parse(argv)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    processor = build_processor()
    model = _build_model(processor.tokenizer, cfg.init)
    t0 = _train(model, processor.tokenizer, cfg, rng)
    _save(model, processor, cfg, t0)
    print(f"saved to {cfg.out}")


if __name__ == "__main__":
    main()
