"""The fine-tuning loop: teacher masks, student region embeddings, the loss, DDP, checkpoints.

One step: take this process' slice of the step's global batch; make each (image, phrase) region's
mask (the teacher's Grad-ECLIP map through :func:`~.masks.soft_mask`, or an ablation's mask); run
the student once (dense features, image, caption and phrase embeddings); gather the embeddings of
all processes; :class:`~.loss.RegionPhraseLoss` on the global batch; AdamW (ShapesCLIP's own
optimiser and warm-up/cosine schedule), gradients clipped to norm 1, ``logit_scale`` clamped to
100 as in CLIP.

``out/checkpoint.pt`` (step, weights, optimiser, schedule, RNG states, configuration, the
run's fingerprint and its whole log) is written every ``save_every`` steps and at the end;
:func:`finetune` resumes from it only when the fingerprint (settings, data and initial weights)
is the same. A non-finite loss or weight stops the run at once (:class:`NonFiniteError`), before
anything is written from that step.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..distributed import Ranks, init
from . import dist as D
from .data import DataError, Sample
from .dense import dense_features, pool_regions
from .loss import RegionPhraseLoss, RegionPhraseLossOutput
from .masks import TEMPERATURE, THRESHOLD, grid_masks, soft_mask, uniform_masks
from .teacher import TEACHER_METHODS, Teacher, flatten_phrases

#: Where region masks come from: the teacher's maps, or the ablations' ground truth / uniform masks.
MASK_KINDS = TEACHER_METHODS + ("gt", "uniform")


@dataclass
class FinetuneConfig:
    """Settings of a fine-tuning run (the defaults are the ``captum-gradeclip finetune`` defaults).

    Attributes:
        steps: optimisation steps. batch: the global batch (split over processes). lr: peak
        learning rate. seed: data seed. masks: one of :data:`MASK_KINDS`. region_weight,
        global_weight: the loss' weights. threshold, temperature: :func:`~.masks.soft_mask`'s.
        save_every: steps between checkpoints. log_every: steps between log lines. captions:
        ShapesCLIP's caption mode (:data:`~.data.CAPTION_MODES`; unused with a pairs file).
    """

    steps: int = 300
    batch: int = 64
    lr: float = 1e-4
    seed: int = 0
    masks: str = "gradeclip"
    region_weight: float = 1.0
    global_weight: float = 1.0
    threshold: float = THRESHOLD
    temperature: float = TEMPERATURE
    save_every: int = 50
    log_every: int = 25
    captions: str = "mixed"

    def check(self, world: int) -> None:
        """Raises ValueError for settings that cannot run on ``world`` processes."""
        if self.masks not in MASK_KINDS:
            raise ValueError(f"masks must be one of {MASK_KINDS}, got {self.masks!r}")
        if self.steps < 1 or self.batch < world:
            raise ValueError(f"need steps >= 1 and a global batch of at least one sample per process "
                             f"({world}), got steps={self.steps}, batch={self.batch}")


class Student(nn.Module):
    """The model being fine-tuned, as one forward (what DistributedDataParallel wraps):
    ``(pixel_values (N, 3, H, W), input_ids (T, L), attention_mask (T, L))`` ->
    ``(dense (N, h, w, E), image_embeds (N, E), text_embeds (T, E), logit_scale.exp() ())``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tuple[Tensor, ...]:
        from ..forward import _features

        dense, image = dense_features(self.model, pixel_values)
        text = _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        return dense, image, text, self.model.logit_scale.exp()


def region_masks(kind: str, teacher: Optional[Teacher], pixels: Tensor, samples: Sequence[Sample],
                 grid: Tuple[int, int], cfg: FinetuneConfig) -> Tensor:
    """``(R, h, w)`` weights of every (image, phrase) region of ``samples`` (order of
    :func:`~.teacher.flatten_phrases`): the soft masks of the samples' mined maps when they all
    have them, else of the teacher's; the true masks' patch coverage (``"gt"``) or ones
    (``"uniform"``).

    Raises:
        DataError: ``"gt"`` for samples without true masks; mined maps on another grid.
    """
    if kind == "uniform":
        return uniform_masks(sum(len(s.phrases) for s in samples), grid)
    if kind == "gt":
        if any(s.masks is None for s in samples):
            raise DataError("masks='gt' (the oracle ablation) needs true masks: ShapesCLIP scenes only")
        return grid_masks(torch.cat([s.masks for s in samples]), grid)
    if all(s.maps is not None for s in samples):  # mined beforehand
        maps = torch.cat([s.maps for s in samples])
        if maps.shape[1:] != grid:
            raise DataError(f"mined maps have the grid {tuple(maps.shape[1:])}, the model's is {grid}")
    else:
        maps = teacher.maps(pixels, [s.phrases for s in samples])
    return soft_mask(maps, threshold=cfg.threshold, temperature=cfg.temperature)


def _ids(strings: List[str], device: torch.device) -> Tensor:
    """Equal strings -> equal ids ``(len(strings),)``."""
    table: Dict[str, int] = {}
    return torch.tensor([table.setdefault(s, len(table)) for s in strings], dtype=torch.long, device=device)


def train_step(student: nn.Module, teacher: Optional[Teacher], processor: Any, loss_fn: RegionPhraseLoss,
               samples: Sequence[Sample], cfg: FinetuneConfig, d: Ranks) -> RegionPhraseLossOutput:
    """The loss of one step on this process' ``samples`` (gathered into the global batch); not
    yet differentiated."""
    pixels = processor(images=[s.image for s in samples], return_tensors="pt").pixel_values.to(d.device)
    image_index, phrases = flatten_phrases([s.phrases for s in samples])
    captions = [s.caption for s in samples]
    tok = processor.tokenizer(captions + phrases, padding=True, truncation=True, return_tensors="pt").to(d.device)
    dense, image, text, scale = student(pixels, tok.input_ids, tok.attention_mask)
    masks = region_masks(cfg.masks, teacher, pixels, samples, tuple(dense.shape[1:3]), cfg).to(d.device)
    keep = masks.flatten(1).sum(-1) > 0  # a fully occluded object has no true region
    regions = pool_regions(dense, masks[keep], image_index.to(d.device)[keep])
    kept = [p for p, k in zip(phrases, keep.tolist()) if k]
    n = len(samples)
    return loss_fn(region_embeds=D.gather_rows(regions, d), phrase_embeds=D.gather_rows(text[n:][keep], d),
                   phrase_ids=_ids(D.gather_objects(kept, d), d.device),
                   image_embeds=D.gather_rows(image, d), caption_embeds=D.gather_rows(text[:n], d),
                   caption_ids=_ids(D.gather_objects(captions, d), d.device), logit_scale=scale)


class NonFiniteError(ValueError):
    """The loss or a weight became NaN or infinite (a learning rate too high): the run stops and
    nothing of that step is written."""


def fingerprint(model: nn.Module, source: Any) -> Dict[str, str]:
    """What identifies a run besides its settings: sha256 of the initial weights (call before
    training) and of the data (``source.fingerprint()``: the pairs or the scene seeds)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    data = source.fingerprint() if hasattr(source, "fingerprint") else type(source).__name__
    return {"model": h.hexdigest(), "data": data}


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path: Path, step: int, model: nn.Module, opt: Any, sched: Any, cfg: FinetuneConfig,
                    fingerprint: Optional[Dict[str, str]] = None, history: Optional[Dict[str, Any]] = None) -> None:
    """Write ``path`` atomically: the next step, weights, optimiser, schedule, RNG states, config,
    the run's ``fingerprint`` and ``history`` (``{"log", "runs"}``); nothing partial is left.

    Raises:
        NonFiniteError: a weight is not finite (nothing is written).
        ValueError: the folder cannot be written (a full disk, no permission).
    """
    if not _finite(model):
        raise NonFiniteError(f"refusing to write {path}: the model has NaN or infinite weights")
    tmp = path.with_suffix(".tmp")
    try:
        torch.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "rng": _rng_state(), "config": asdict(cfg),
                    "fingerprint": fingerprint, "history": history}, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e}; free space or fix the folder, then rerun the "
                         "same command (it resumes from the last checkpoint)") from None
    finally:
        tmp.unlink(missing_ok=True)


def _read_checkpoint(path: Path) -> Dict[str, Any]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(ck, dict) or not {"step", "model", "config"} <= set(ck):
            raise ValueError("not a fine-tuning checkpoint")
        return ck
    except Exception as e:  # torch.load raises many types for a truncated or foreign file
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:60]}): it is truncated or not a "
                         "checkpoint of this command; delete it to start the run over") from None


def load_checkpoint(path: Path, model: nn.Module, opt: Any, sched: Any, cfg: FinetuneConfig,
                    fingerprint: Optional[Dict[str, str]] = None, history: Optional[Dict[str, Any]] = None) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the step to continue at (0
    when there is none). ``history`` (a dict) receives the checkpoint's ``log`` and ``runs``.

    Raises:
        ValueError: the checkpoint is truncated, or of another run: other settings, or (with
            ``fingerprint``) other data or another initial model (use another ``out``).
    """
    if not path.is_file():
        return 0
    ck = _read_checkpoint(path)
    saved = {k: v for k, v in ck["config"].items() if k not in ("save_every", "log_every")}
    now = {k: v for k, v in asdict(cfg).items() if k not in ("save_every", "log_every")}
    if saved != now:
        diff = {k: (saved.get(k), now.get(k)) for k in now if saved.get(k) != now.get(k)}
        raise ValueError(f"{path} was written with other settings {diff} (saved, now); resume with the same "
                         "settings or use another output folder")
    if fingerprint is not None and ck.get("fingerprint") != fingerprint:
        have = ck.get("fingerprint") or {}
        what = [k for k in ("data", "model") if have.get(k) != fingerprint.get(k)] or ["fingerprint"]
        verb = "differ" if len(what) > 1 else "differs"
        raise ValueError(f"{path} is the checkpoint of another run (its {' and '.join(what)} {verb}: another "
                         f"{'pairs file' if 'data' in what else 'base model'} or an older version); give another "
                         "--out, or delete the checkpoint to start over")
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    torch.set_rng_state(ck["rng"]["torch"])
    random.setstate(ck["rng"]["python"])
    if "cuda" in ck["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    if history is not None:
        history.update(ck.get("history") or {})
    return int(ck["step"])


def _step(wrapped: nn.Module, model: nn.Module, parts: Tuple[Any, ...], samples: List[Sample],
          cfg: FinetuneConfig, d: Ranks) -> RegionPhraseLossOutput:
    teacher, processor, loss_fn, opt, sched = parts
    out = train_step(wrapped, teacher, processor, loss_fn, samples, cfg, d)
    if not torch.isfinite(out.loss):
        raise NonFiniteError(f"the loss is {out.loss.item()} (lr {cfg.lr}): lower --lr; no weights of this step "
                             "were written")
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    if not _finite(model):
        raise NonFiniteError(f"the weights became NaN or infinite (lr {cfg.lr}): lower --lr; they were not written")
    return out


def finetune(model: nn.Module, processor: Any, source: Any, cfg: FinetuneConfig, out: "str | Path", *,
             d: Optional[Ranks] = None, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Fine-tune ``model`` in place (resuming from ``out/checkpoint.pt`` if there is one).

    Args:
        model: a Hugging Face ``CLIPModel``; its weights are trained, its train/eval flag restored.
            The teacher is a frozen copy of it as it is passed in (pass the *initial* model also
            when resuming: the checkpoint's weights are loaded after the copy).
        processor: its ``CLIPProcessor``. source: :class:`~.data.ShapesSource` or
            :class:`~.data.PairsSource`. cfg: the settings. out: folder for the checkpoint.
        d: the process group (default: :func:`captum_gradeclip.distributed.init`'s). stop_after: stop before this step
            (an interruption, for tests); the checkpoint is written there.

    Returns:
        ``{"steps_run", "seconds", "log": [[step, loss, region, global], ...], "runs": [{"from_step",
        "to_step", "seconds"}, ...]}``: ``log`` and ``runs`` over the whole run, resumed parts included.

    Raises:
        ValueError: bad settings; a truncated checkpoint or one of another run (settings, data,
            initial model).
        NonFiniteError: the loss or a weight became NaN or infinite (the run stops at that step).
    """
    d = d or init()
    cfg.check(d.world)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from ..shapes.train import _optimizer

    mined = getattr(source, "mined", False)
    teacher = Teacher(model, processor.tokenizer, cfg.masks) if cfg.masks in TEACHER_METHODS and not mined else None
    was_training = model.training
    model.to(d.device).train()
    student = Student(model)
    wrapped = student
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(student, device_ids=[torch.device(d.device).index] if d.device.startswith("cuda") else None)
    opt, sched = _optimizer(list(model.parameters()), cfg)
    fp = fingerprint(model, source)
    history: Dict[str, Any] = {"log": [], "runs": []}
    start = load_checkpoint(out / "checkpoint.pt", model, opt, sched, cfg, fp, history)
    parts = (teacher, processor, RegionPhraseLoss(cfg.region_weight, cfg.global_weight), opt, sched)
    lo, hi = d.rank * cfg.batch // d.world, (d.rank + 1) * cfg.batch // d.world
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    log, t0 = history["log"], time.time()
    runs = history["runs"] + [{"from_step": start, "to_step": start, "seconds": 0.0}]
    try:
        for step in range(start, end):
            res = _step(wrapped, model, parts, source.batch(step, cfg.batch, lo, hi), cfg, d)
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                log.append([step, res.loss.item(), res.region.item(), res.global_.item()])
                if d.main:
                    print(f"step {step:4d}  loss {log[-1][1]:.4f}  region {log[-1][2]:.4f}  "
                          f"global {log[-1][3]:.4f}  {time.time() - t0:.0f}s", flush=True)
            if (step + 1) % cfg.save_every == 0 or step + 1 == end:
                runs[-1].update(to_step=step + 1, seconds=round(time.time() - t0, 1))
                if d.main:
                    save_checkpoint(out / "checkpoint.pt", step + 1, model, opt, sched, cfg, fp,
                                    {"log": log, "runs": runs})
                d.barrier()
    finally:
        model.train(was_training)
    return {"steps_run": max(0, end - start), "seconds": round(time.time() - t0, 1), "log": log, "runs": runs}
