"""Weight-space ensembling (WiSE-FT, Wortsman et al., CVPR 2022): the fine-tuned model pulled back
towards the one it started from, ``theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_1``.

Fine-tuning gains region accuracy and costs recognition; on CLIP, intermediate ``alpha`` keeps
most of the first and most of the second (the trade-off curve: ``benchmarks/finetune_ablation.py``).
Every floating-point tensor of the state dict (parameters and float buffers) is interpolated;
tensors that are not floating point (integer buffers such as ``position_ids``) cannot be, and are
copied from the tuned model. The two models must have the same architecture: the same state-dict
names, shapes and dtypes.

    captum-gradeclip wise BASE TUNED --alpha 0.5 --out DIR      # any two checkpoints of one architecture
    captum-gradeclip finetune --out DIR --wise 0.5              # the same, after fine-tuning
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping

import torch
from torch import Tensor, nn

from ..errors import InputError

#: Files of a checkpoint folder that describe the tuned run, not the model: never copied by :func:`wise_folders`.
_RUN_FILES = {"checkpoint.pt", "checkpoint.tmp", "TRAINING.json", "metrics.json", "WISE.json"}


def check_alpha(alpha: float, what: str = "alpha") -> float:
    """``alpha`` as a float in ``[0, 1]``.

    Raises:
        InputError: ``alpha`` outside ``[0, 1]`` or not a number.
    """
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0 <= alpha <= 1):
        raise InputError(f"{what} must be in [0, 1] (0: the base model, 1: the tuned one), got {alpha}")
    return float(alpha)


def interpolate_state(base: Mapping[str, Tensor], tuned: Mapping[str, Tensor], alpha: float,
                      names: "tuple[str, str]" = ("base", "tuned")) -> Dict[str, Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every floating-point tensor; other tensors from ``tuned``.

    Args:
        base, tuned: state dicts of one architecture (same names, shapes, dtypes).
        alpha: in ``[0, 1]``. names: how the error messages name the two.

    Returns:
        a new state dict (tensors on ``tuned``'s devices; the inputs are not modified). ``alpha = 0``
        gives ``base``'s float tensors exactly, ``alpha = 1`` ``tuned``'s.

    Raises:
        InputError: ``alpha`` outside ``[0, 1]``; the state dicts differ in names, shapes or dtypes.
    """
    alpha = check_alpha(alpha)
    only_a, only_b = sorted(set(base) - set(tuned)), sorted(set(tuned) - set(base))
    if only_a or only_b:
        raise InputError(f"{names[0]} and {names[1]} are not the same architecture: tensors only in {names[0]}: "
                         f"{only_a[:3]}, only in {names[1]}: {only_b[:3]} ({len(only_a)} and {len(only_b)}); "
                         "interpolate two checkpoints of one model")
    out: Dict[str, Tensor] = {}
    for name, t1 in tuned.items():
        t0 = base[name]
        if t0.shape != t1.shape or t0.dtype != t1.dtype:
            raise InputError(f"{names[0]} and {names[1]} are not the same architecture: {name} is "
                             f"{tuple(t0.shape)} {t0.dtype} in {names[0]} and {tuple(t1.shape)} {t1.dtype} in {names[1]}")
        if not t1.is_floating_point():
            out[name] = t1.detach().clone()
        elif alpha == 0:
            out[name] = t0.detach().to(t1.device).clone()
        elif alpha == 1:
            out[name] = t1.detach().clone()
        else:
            out[name] = torch.lerp(t0.detach().to(t1.device, torch.float32), t1.detach().float(), alpha).to(t1.dtype)
    return out


@torch.no_grad()
def wise(base: nn.Module, tuned: nn.Module, alpha: float) -> nn.Module:
    """A new model: a copy of ``tuned`` with the weights :func:`interpolate_state` of the two.

    Args:
        base: the model before fine-tuning. tuned: the fine-tuned model (same architecture).
        alpha: in ``[0, 1]``: 0 is ``base``, 1 is ``tuned``.

    Returns:
        the interpolated model (``base`` and ``tuned`` are not modified).

    Raises:
        InputError: as :func:`interpolate_state`.
    """
    state = interpolate_state(base.state_dict(), tuned.state_dict(), alpha)
    out = copy.deepcopy(tuned)
    out.load_state_dict(state)
    return out


@torch.no_grad()
def apply_wise(model: nn.Module, base_state: Mapping[str, Tensor], alpha: float) -> None:
    """Move ``model`` (the tuned one) in place to :func:`interpolate_state` ``(base_state, model, alpha)``;
    ``alpha = 1`` leaves it as it is."""
    if check_alpha(alpha) < 1:
        model.load_state_dict(interpolate_state(base_state, model.state_dict(), alpha, ("the initial model", "the tuned one")))


def _load_folder(path: str, what: str) -> Any:
    """A ``transformers`` model folder (or hub name) as ``AutoModel`` loads it (offline at once
    when the hub cannot be reached: :mod:`captum_gradeclip.hub`)."""
    from transformers import AutoModel

    from .. import hub

    kw = hub.pretrained_kwargs(path)
    try:
        with hub.quiet_loading():
            return AutoModel.from_pretrained(path, **kw, **({"adapter_kwargs": dict(kw)} if kw else {}))
    except (OSError, ValueError) as e:
        raise InputError(f"{what} {path}: cannot load a model there ({str(e).splitlines()[0][:120]}); give a folder "
                         f"written by save_pretrained (e.g. a finetune --out) or a model name\n{hub.advice(path, kw)}") from None


def wise_folders(base: str, tuned: str, alpha: float, out: "str | Path") -> Dict[str, Any]:
    """Interpolate two saved checkpoints of one architecture and save the result to ``out``.

    The model is written by ``save_pretrained``; the processor / tokenizer files of ``tuned``
    (when it is a folder) are copied beside it, so that ``out`` loads as ``tuned`` does. ``out/WISE.json``
    records the inputs and ``alpha``.

    Args:
        base, tuned: folders (or hub names) that ``transformers.AutoModel.from_pretrained`` loads.
        alpha: in ``[0, 1]``. out: the output folder (made if missing).

    Returns:
        the record written to ``out/WISE.json``.

    Raises:
        InputError: ``alpha`` outside ``[0, 1]``; a folder that does not load; two architectures.
    """
    import json

    alpha = check_alpha(alpha)
    m0, m1 = _load_folder(base, "BASE"), _load_folder(tuned, "TUNED")
    if type(m0) is not type(m1):
        raise InputError(f"BASE {base} is a {type(m0).__name__} and TUNED {tuned} a {type(m1).__name__}: not the "
                         "same architecture")
    state = interpolate_state(m0.state_dict(), m1.state_dict(), alpha, (f"BASE {base}", f"TUNED {tuned}"))
    m1.load_state_dict(state)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if Path(tuned).is_dir():
        for f in Path(tuned).iterdir():
            if f.is_file() and f.name not in _RUN_FILES and not f.name.startswith("model"):
                shutil.copy2(f, out / f.name)
    m1.save_pretrained(out)
    record = {"base": str(base), "tuned": str(tuned), "alpha": alpha,
              "formula": "(1 - alpha) * base + alpha * tuned over floating-point tensors; others from tuned",
              "not_interpolated": sorted(k for k, v in state.items() if not v.is_floating_point())}
    (out / "WISE.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
