"""ShapesViT: a small Hugging Face ``ViTForImageClassification`` trained on single-object
ShapesCLIP scenes, one class per colour-shape pair (48 classes), so that classifier explanations
(Grad-ECLIP, Captum's LayerGradCam, IntegratedGradients, Occlusion) can be compared against exact
object masks. Trained from scratch on the CPU in a few minutes::

    python -m captum_gradeclip.shapes.classifier --steps 1500 --out captum_gradeclip/shapes/weights/classifier

Shipped in ``weights/classifier`` (``save_pretrained``, about 0.6 MB); :func:`load_shapes_classifier`
loads it offline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .scenes import COLOUR_NAMES, SHAPES, Scene, render_scene

CLASSIFIER_DIR = Path(__file__).resolve().parent / "weights" / "classifier"
#: the class names, colour-major: ``"red circle"``, ``"red square"``, ...
CLASSES: List[str] = [f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES]
#: scene seeds used for training start here; evaluation uses seeds below it
TRAIN_SEED0 = 1_000_000


def class_of(scene: Scene, i: int = 0) -> int:
    """The class index of object ``i`` of ``scene``."""
    o = scene.objects[i]
    return COLOUR_NAMES.index(o.colour) * len(SHAPES) + SHAPES.index(o.shape)


def to_pixels(images: Sequence) -> Tensor:
    """``N`` PIL RGB images -> ``(N, 3, H, W)`` in ``[-1, 1]`` (``ViTImageProcessor``'s mean and std 0.5)."""
    import numpy as np

    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images])).permute(0, 3, 1, 2)
    return (x / 255.0 - 0.5) / 0.5


def scenes(n: int, seed0: int, n_objects: int = 1, size: int = 64) -> Tuple[Tensor, List[Scene]]:
    """``n`` scenes from seeds ``seed0 ...``: ``(pixels (n, 3, size, size), scenes)``."""
    sc = [render_scene(seed=seed0 + i, n_objects=n_objects, size=size) for i in range(n)]
    return to_pixels([s.image for s in sc]), sc


def make_classifier(size: int = 64, patch: int = 8, width: int = 64, layers: int = 4, heads: int = 4):
    """An untrained ShapesViT (about 0.15 M parameters)."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                    intermediate_size=2 * width, image_size=size, patch_size=patch, num_labels=len(CLASSES),
                    id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)},
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(cfg)


def load_shapes_classifier(path: Optional[str] = None):
    """The shipped ShapesViT (or a folder saved by :func:`main`), in eval mode.

    Raises:
        FileNotFoundError: no model in ``path``.
    """
    from transformers import ViTForImageClassification

    folder = Path(path) if path is not None else CLASSIFIER_DIR
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no ShapesViT in {folder}: train one with "
                                "`python -m captum_gradeclip.shapes.classifier --out FOLDER`")
    return ViTForImageClassification.from_pretrained(str(folder)).eval()


def train(model, steps: int, batch: int, pool: int, lr: float = 1e-3, log_every: int = 100) -> List[dict]:
    """Train ``model`` on ``pool`` pre-rendered single-object scenes (flipped at random), AdamW
    with a cosine schedule. Returns the log."""
    x, sc = scenes(pool, TRAIN_SEED0)
    y = torch.tensor([class_of(s) for s in sc])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    model.train()
    log, t0 = [], time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch,), generator=gen)
        xb = x[idx]
        flip = torch.rand(batch, generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=xb).logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)})
            print(log[-1], flush=True)
    return log


@torch.no_grad()
def accuracy(model, n: int = 500, seed0: int = 0) -> float:
    """Top-1 accuracy on ``n`` held-out single-object scenes (seeds ``seed0 ...``)."""
    x, sc = scenes(n, seed0)
    y = torch.tensor([class_of(s) for s in sc])
    return float((model.eval()(pixel_values=x).logits.argmax(-1) == y).float().mean())


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pool", type=int, default=8000, help="pre-rendered training scenes")
    p.add_argument("--out", default=str(CLASSIFIER_DIR))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = make_classifier()
    log = train(model, args.steps, args.batch, args.pool)
    acc = accuracy(model)
    print(f"held-out accuracy (500 single-object scenes): {acc:.3f}")
    model.eval().save_pretrained(args.out)
    info = {"steps": args.steps, "batch": args.batch, "pool": args.pool, "heldout_accuracy": acc, "log": log}
    (Path(args.out) / "TRAINING.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
