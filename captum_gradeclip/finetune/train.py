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
from ..errors import InputError
from . import dist as D
from .data import DataError, Sample
from .dense import dense_features, pool_regions
from .loss import REGION_FORMS, RegionPhraseLoss, RegionPhraseLossOutput
from .masks import TEMPERATURE, THRESHOLD, grid_masks, soft_mask, uniform_masks
from .lora import lora_training
from .teacher import TEACHER_METHODS, MomentumModel, Teacher, flatten_phrases
from .wise import apply_wise, check_alpha

#: Where region masks come from: the teacher's maps, or the ablations' ground truth / uniform masks.
MASK_KINDS = TEACHER_METHODS + ("gt", "uniform")


@dataclass
class FinetuneConfig:
    """Settings of a fine-tuning run (the defaults are the ``captum-gradeclip finetune`` defaults).

    The defaults are the point of ``benchmarks/finetune_ablation.py``'s trade-off curve chosen on its
    choosing range (the largest region gain within 1 point of recognition): 150 steps with the
    softmax region term, then WiSE-FT at ``wise = 0.35`` (region top-1 +12.7 points, recognition
    -0.5 on the report range). ``wise=1.0`` gives the fully tuned model.

    Attributes:
        steps: optimisation steps. batch: the global batch (split over processes). lr: peak
        learning rate. seed: data seed. masks: one of :data:`MASK_KINDS`. region_weight,
        global_weight: the loss' weights. threshold, temperature: :func:`~.masks.soft_mask`'s.
        save_every: steps between checkpoints. log_every: steps between log lines. captions:
        ShapesCLIP's caption mode (:data:`~.data.CAPTION_MODES`; unused with a pairs file).
        confidence: weight each region term by its map's maximum. focal_gamma: focal exponent of
        the region term. region_form: :data:`~.loss.REGION_FORMS`. momentum: EMA decay of the
        momentum copy (``0``: none); distill: its share of the image–caption targets.
        freeze_projection: keep ``visual_projection`` fixed. (:mod:`.loss` explains each variant.)
        lora: the rank of low-rank adapters on the attention projections (:mod:`.lora`; ``0``: the
        whole model is trained). wise: WiSE-FT's ``alpha`` (:mod:`.wise`): the result is
        ``(1 - wise) * initial + wise * tuned`` (``1``: the tuned model); it is applied after the
        last step, so it is not part of the run's identity (a finished run can be re-interpolated).
    """

    steps: int = 150
    batch: int = 64
    lr: float = 1e-4
    seed: int = 0
    masks: str = "grad-eclip"
    region_weight: float = 1.0
    global_weight: float = 1.0
    threshold: float = THRESHOLD
    temperature: float = TEMPERATURE
    save_every: int = 50
    log_every: int = 25
    captions: str = "mixed"
    confidence: bool = False
    focal_gamma: float = 0.0
    region_form: str = "softmax"
    momentum: float = 0.0
    distill: float = 0.0
    freeze_projection: bool = False
    lora: int = 0
    wise: float = 0.35

    def loss(self) -> RegionPhraseLoss:
        """The :class:`~.loss.RegionPhraseLoss` of these settings."""
        return RegionPhraseLoss(self.region_weight, self.global_weight, focal_gamma=self.focal_gamma,
                                region_form=self.region_form, distill=self.distill)

    def check(self, world: int) -> None:
        """Raises ValueError for settings that cannot run on ``world`` processes."""
        if self.masks == "gradeclip":
            raise InputError("masks 'gradeclip' is now called 'grad-eclip' (the methods' kebab-case names)")
        if self.masks not in MASK_KINDS:
            raise ValueError(f"masks must be one of {MASK_KINDS}, got {self.masks!r}")
        if self.region_form not in REGION_FORMS or not 0 <= self.momentum < 1 or (self.distill > 0) != (self.momentum > 0):
            raise ValueError(f"need region_form in {REGION_FORMS}, 0 <= momentum < 1 and distill > 0 exactly when "
                             f"momentum > 0, got {self.region_form!r}, {self.momentum}, {self.distill}")
        if self.lora < 0:
            raise InputError(f"the LoRA rank must be >= 0 (0: no adapters), got {self.lora}")
        check_alpha(self.wise, "wise")
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
        from ..forward import features

        dense, image = dense_features(self.model, pixel_values)
        text = features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        return dense, image, text, self.model.logit_scale.exp()


def regions(kind: str, teacher: Optional[Teacher], pixels: Tensor, samples: Sequence[Sample],
            grid: Tuple[int, int], cfg: FinetuneConfig) -> Tuple[Tensor, Tensor]:
    """``(masks (R, h, w), confidence (R,))`` of every (image, phrase) region of ``samples`` (order of
    :func:`~.teacher.flatten_phrases`; samples without phrases have none): the soft masks of the
    samples' mined maps when they all have them, else of the teacher's, and each map's maximum;
    the true masks' patch coverage (``"gt"``) or ones (``"uniform"``), with confidence 1.

    Raises:
        DataError: ``"gt"`` for samples without true masks; mined maps on another grid.
    """
    n = sum(len(s.phrases) for s in samples)
    if kind == "uniform" or n == 0:
        return uniform_masks(n, grid), torch.ones(n)
    if kind == "gt":
        if any(s.masks is None for s in samples):
            raise DataError("masks='gt' (the oracle ablation) needs true masks: ShapesCLIP scenes only")
        return grid_masks(torch.cat([s.masks for s in samples]), grid), torch.ones(n)
    if all(s.maps is not None for s in samples if s.phrases):  # mined beforehand
        maps = torch.cat([s.maps for s in samples if s.phrases])
        if maps.shape[1:] != grid:
            raise DataError(f"mined maps have the grid {tuple(maps.shape[1:])}, the model's is {grid}")
    else:
        named = [i for i, s in enumerate(samples) if s.phrases]
        maps = teacher.maps(pixels[named], [samples[i].phrases for i in named])
    masks = soft_mask(maps, threshold=cfg.threshold, temperature=cfg.temperature)
    return masks, maps.detach().flatten(1).amax(-1).clamp_min(0).float()


def region_masks(kind: str, teacher: Optional[Teacher], pixels: Tensor, samples: Sequence[Sample],
                 grid: Tuple[int, int], cfg: FinetuneConfig) -> Tensor:
    """The ``(R, h, w)`` masks of :func:`regions`."""
    return regions(kind, teacher, pixels, samples, grid, cfg)[0]


def _ids(strings: List[str], device: torch.device) -> Tensor:
    """Equal strings -> equal ids ``(len(strings),)``."""
    table: Dict[str, int] = {}
    return torch.tensor([table.setdefault(s, len(table)) for s in strings], dtype=torch.long, device=device)


def _anchors(momentum: Optional[MomentumModel], pixels: Tensor, tok: Any, n: int, d: Ranks) -> Dict[str, Tensor]:
    """The momentum copy's gathered image and caption embeddings (the loss' anchor keywords)."""
    if momentum is None:
        return {}
    image, text = momentum.embeds(pixels, tok.input_ids[:n], tok.attention_mask[:n])
    return {"anchor_image_embeds": D.gather_rows(image, d), "anchor_caption_embeds": D.gather_rows(text, d)}


def train_step(student: nn.Module, teacher: Optional[Teacher], processor: Any, loss_fn: RegionPhraseLoss,
               samples: Sequence[Sample], cfg: FinetuneConfig, d: Ranks,
               momentum: Optional[MomentumModel] = None) -> RegionPhraseLossOutput:
    """The loss of one step on this process' ``samples`` (gathered into the global batch); not
    yet differentiated. ``momentum``: the anchor of ``cfg.distill``."""
    pixels = processor(images=[s.image for s in samples], return_tensors="pt").pixel_values.to(d.device)
    image_index, phrases = flatten_phrases([s.phrases for s in samples])
    captions = [s.caption for s in samples]
    tok = processor.tokenizer(captions + phrases, padding=True, truncation=True, return_tensors="pt").to(d.device)
    dense, image, text, scale = student(pixels, tok.input_ids, tok.attention_mask)
    masks, conf = regions(cfg.masks, teacher, pixels, samples, tuple(dense.shape[1:3]), cfg)
    masks, conf = masks.to(d.device), conf.to(d.device)
    keep = masks.flatten(1).sum(-1) > 0  # a fully occluded object has no true region
    pooled = pool_regions(dense, masks[keep], image_index.to(d.device)[keep])
    kept = [p for p, k in zip(phrases, keep.tolist()) if k]
    n = len(samples)
    weights = {"region_weights": D.gather_rows(conf[keep], d)} if cfg.confidence else {}
    return loss_fn(region_embeds=D.gather_rows(pooled, d), phrase_embeds=D.gather_rows(text[n:][keep], d),
                   phrase_ids=_ids(D.gather_objects(kept, d), d.device),
                   image_embeds=D.gather_rows(image, d), caption_embeds=D.gather_rows(text[:n], d),
                   caption_ids=_ids(D.gather_objects(captions, d), d.device), logit_scale=scale,
                   **weights, **_anchors(momentum, pixels, tok, n, d))


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
                    fingerprint: Optional[Dict[str, str]] = None, history: Optional[Dict[str, Any]] = None,
                    momentum: Optional[MomentumModel] = None) -> None:
    """Write ``path`` atomically: the next step, weights, optimiser, schedule, RNG states, config,
    the run's ``fingerprint`` and ``history`` (``{"log", "runs"}``) and the ``momentum`` copy's
    weights; nothing partial is left.

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
                    "fingerprint": fingerprint, "history": history,
                    "momentum": None if momentum is None else momentum.model.state_dict()}, tmp)
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


#: Settings that do not change what is trained: a run resumes whatever they are.
_NOT_IDENTITY = ("save_every", "log_every", "wise")


def _identity(config: Dict[str, Any]) -> Dict[str, Any]:
    """The settings that identify a run (the old method name ``gradeclip`` read as ``grad-eclip``)."""
    out = {k: v for k, v in config.items() if k not in _NOT_IDENTITY}
    return {**out, "masks": "grad-eclip"} if out.get("masks") == "gradeclip" else out


def load_checkpoint(path: Path, model: nn.Module, opt: Any, sched: Any, cfg: FinetuneConfig,
                    fingerprint: Optional[Dict[str, str]] = None, history: Optional[Dict[str, Any]] = None,
                    momentum: Optional[MomentumModel] = None) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns the step to continue at (0
    when there is none). ``history`` (a dict) receives the checkpoint's ``log`` and ``runs``;
    ``momentum`` its momentum copy's weights.

    Raises:
        ValueError: the checkpoint is truncated, or of another run: other settings, or (with
            ``fingerprint``) other data or another initial model (use another ``out``).
    """
    if not path.is_file():
        return 0
    ck = _read_checkpoint(path)
    saved = _identity({"lora": 0, **ck["config"]})  # checkpoints from before LoRA trained no adapters
    now = _identity(asdict(cfg))
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
    if momentum is not None:
        momentum.model.load_state_dict(ck["momentum"])
    torch.set_rng_state(ck["rng"]["torch"])
    random.setstate(ck["rng"]["python"])
    if "cuda" in ck["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    if history is not None:
        history.update(ck.get("history") or {})
    return int(ck["step"])


def _step(wrapped: nn.Module, model: nn.Module, parts: Tuple[Any, ...], samples: List[Sample],
          cfg: FinetuneConfig, d: Ranks) -> RegionPhraseLossOutput:
    teacher, processor, loss_fn, opt, sched, momentum = parts
    out = train_step(wrapped, teacher, processor, loss_fn, samples, cfg, d, momentum)
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
    if momentum is not None:
        momentum.update(model)
    return out


def _frozen(model: nn.Module, cfg: FinetuneConfig) -> List[nn.Parameter]:
    """Freeze what ``cfg`` keeps fixed (``visual_projection``); returns the parameters frozen
    here (the caller restores their ``requires_grad``)."""
    if not cfg.freeze_projection:
        return []
    params = [p for p in model.visual_projection.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    return params


def _distributed(student: nn.Module, d: Ranks) -> nn.Module:
    """The student as each process trains it: itself on one process, wrapped in DDP on several."""
    if d.world == 1:
        return student
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[torch.device(d.device).index] if d.device.startswith("cuda") else None)


def _log(log: List[List[float]], step: int, res: Any, d: Ranks, t0: float) -> None:
    """Append ``[step, loss, region, global]`` to ``log``; the main process prints it."""
    log.append([step, res.loss.item(), res.region.item(), res.global_.item()])
    if d.main:
        print(f"step {step:4d}  loss {log[-1][1]:.4f}  region {log[-1][2]:.4f}  "
              f"global {log[-1][3]:.4f}  {time.time() - t0:.0f}s", flush=True)


def finetune(model: nn.Module, processor: Any, source: Any, cfg: FinetuneConfig, out: "str | Path", *,
             d: Optional[Ranks] = None, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Fine-tune ``model`` in place (resuming from ``out/checkpoint.pt`` if there is one).

    Args:
        model: a Hugging Face ``CLIPModel``; its weights are trained, its train/eval flag and its
            parameters' ``requires_grad`` restored. The teacher is a frozen copy of it as it is
            passed in (pass the *initial* model also when resuming: the checkpoint's weights are
            loaded after the copy). With ``cfg.lora``, the adapters are merged into the weights at
            the end (the model stays a plain ``CLIPModel``); with ``cfg.wise < 1``, a finished run
            leaves ``(1 - wise) * initial + wise * tuned`` (the checkpoint keeps the tuned state).
        processor: its ``CLIPProcessor``. source: :class:`~.data.ShapesSource` or
            :class:`~.data.PairsSource`. cfg: the settings. out: folder for the checkpoint.
        d: the process group (default: :func:`captum_gradeclip.distributed.init`'s). stop_after: stop before this step
            (an interruption, for tests); the checkpoint is written there.

    Returns:
        ``{"steps_run", "seconds", "finished", "log": [[step, loss, region, global], ...], "runs":
        [{"from_step", "to_step", "seconds"}, ...]}``: ``log`` and ``runs`` over the whole run,
        resumed parts included; ``finished``: the last step is done (WiSE was applied).

    Raises:
        ValueError: bad settings; a truncated checkpoint or one of another run (settings, data,
            initial model); peft missing for ``cfg.lora``.
        NonFiniteError: the loss or a weight became NaN or infinite (the run stops at that step).
    """
    d = d or init()
    cfg.check(d.world)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mined = getattr(source, "mined", False)
    teacher = Teacher(model, processor.tokenizer, cfg.masks) if cfg.masks in TEACHER_METHODS and not mined else None
    fp = fingerprint(model, source)  # the initial weights, before any adapter
    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if cfg.wise < 1 else None
    was_training = model.training
    model.to(d.device).train()
    frozen = _frozen(model, cfg)
    try:
        with lora_training(model, cfg.lora, cfg.seed) as params:
            run = _train(model, list(params.values()), (teacher, processor, source, fp), cfg, out, d, stop_after)
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    if initial is not None and run["finished"]:
        apply_wise(model, initial, cfg.wise)
    return run


def _train(model: nn.Module, params: List[nn.Parameter], inputs: Tuple[Any, ...], cfg: FinetuneConfig, out: Path,
           d: Ranks, stop_after: Optional[int]) -> Dict[str, Any]:
    """:func:`finetune`'s loop over ``params`` (all of the model's, or its adapters'), checkpoints included."""
    from ..shapes.train import make_optimizer

    teacher, processor, source, fp = inputs
    momentum = MomentumModel(model, cfg.momentum) if cfg.momentum > 0 else None
    wrapped = _distributed(Student(model), d)
    opt, sched = make_optimizer(params, cfg)
    history: Dict[str, Any] = {"log": [], "runs": []}
    start = load_checkpoint(out / "checkpoint.pt", model, opt, sched, cfg, fp, history, momentum)
    parts = (teacher, processor, cfg.loss(), opt, sched, momentum)
    lo, hi = d.rank * cfg.batch // d.world, (d.rank + 1) * cfg.batch // d.world
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    log, t0 = history["log"], time.time()
    runs = history["runs"] + [{"from_step": start, "to_step": start, "seconds": 0.0}]
    for step in range(start, end):
        res = _step(wrapped, model, parts, source.batch(step, cfg.batch, lo, hi), cfg, d)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            _log(log, step, res, d, t0)
        if (step + 1) % cfg.save_every == 0 or step + 1 == end:
            runs[-1].update(to_step=step + 1, seconds=round(time.time() - t0, 1))
            if d.main:
                save_checkpoint(out / "checkpoint.pt", step + 1, model, opt, sched, cfg, fp,
                                {"log": log, "runs": runs}, momentum)
            d.barrier()
    return {"steps_run": max(0, end - start), "seconds": round(time.time() - t0, 1), "finished": end >= cfg.steps,
            "log": log, "runs": runs}
