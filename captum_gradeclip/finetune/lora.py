"""Low-rank adapters (LoRA, Hu et al. 2022) on the attention projections only, through ``peft``
(the optional extra ``lora``: ``pip install "captum-gradeclip[lora]"``).

An adapter of rank ``r`` adds ``B A`` (``A: (r, in)``, ``B: (out, r)``, ``B = 0`` at the start)
to each q / k / v / out projection of both towers' attention layers and trains only ``A`` and
``B``: the model can move in ``r`` directions per projection and nowhere else (no MLP, norm,
embedding or projection head), which bounds how far fine-tuning takes it from the base model.
The layers come from :class:`captum_gradeclip.models.LoadedCLIP` (``image_layers``,
``text_layers``), never from a family's attribute names. :func:`merge_lora` folds the adapters
into the weights, so the result is the plain model again (``save_pretrained`` /
``from_pretrained`` as before, no ``peft`` needed to load it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Sequence

import torch
from torch import nn

from ..errors import InputError

#: Names of the attention projections that get adapters (Hugging Face CLIP, ViT 5.x naming).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "o_proj")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise InputError("LoRA (--lora) needs the peft package: pip install \"captum-gradeclip[lora]\" "
                         "(or pip install peft)") from None
    return peft


def lora_targets(model: nn.Module, layers: Sequence[nn.Module]) -> List[str]:
    """The names (in ``model``) of the q / k / v / out projections (``nn.Linear``) of ``layers``,
    and of ``nn.MultiheadAttention`` modules (open_clip / OpenAI layout) inside them.

    Args:
        model: the model. layers: its attention layers, e.g. ``clip.image_layers + clip.text_layers``.

    Raises:
        InputError: no projection found (an attention this function does not know).
    """
    names = {id(m): n for n, m in model.named_modules()}
    out: List[str] = []
    for layer in layers:
        if id(layer) not in names:
            raise InputError(f"a {type(layer).__name__} layer is not a module of the model")
        for sub, m in layer.named_modules():
            full = f"{names[id(layer)]}.{sub}" if sub else names[id(layer)]
            if isinstance(m, nn.MultiheadAttention) or (isinstance(m, nn.Linear) and sub.rsplit(".", 1)[-1] in PROJECTIONS
                                                         and not _inside_mha(layer, sub)):
                out.append(full)
    if not out:
        raise InputError(f"no attention projection ({', '.join(PROJECTIONS)} or nn.MultiheadAttention) in the "
                         f"{len(layers)} layers given: LoRA needs one of them")
    return out


def _inside_mha(layer: nn.Module, sub: str) -> bool:
    """``sub`` is a child of an ``nn.MultiheadAttention`` (its ``out_proj``: adapted with the MHA)."""
    parent = sub.rsplit(".", 1)[0] if "." in sub else ""
    return bool(parent) and isinstance(layer.get_submodule(parent), nn.MultiheadAttention)


def clip_layers(model: nn.Module) -> List[nn.Module]:
    """Both towers' attention layers of a Hugging Face ``CLIPModel``, through
    :class:`~captum_gradeclip.models.LoadedCLIP` (``image_layers + text_layers``)."""
    from .teacher import hf_clip

    clip = hf_clip(model, None)
    return list(clip.image_layers) + list(clip.text_layers)


def add_lora(model: nn.Module, layers: Sequence[nn.Module], rank: int, seed: int = 0) -> List[str]:
    """Put rank-``rank`` adapters on the attention projections of ``layers``, in place; afterwards only
    the adapters' parameters require gradients (the caller restores the others' flags).

    The adapters' initial ``A`` comes from a generator seeded with ``seed`` (the same on every
    process and in every resumed run; ``B`` starts at 0, so the model's outputs are unchanged).
    The scale is ``lora_alpha / rank = 2``.

    Returns:
        the adapted module names (:func:`lora_targets`).

    Raises:
        InputError: ``rank < 1``; peft missing; no projection found.
    """
    if rank < 1:
        raise InputError(f"the LoRA rank must be >= 1, got {rank}")
    peft = _peft()
    targets = lora_targets(model, layers)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(config, model)
    return targets


def lora_parameters(model: nn.Module) -> Dict[str, nn.Parameter]:
    """The adapters' parameters of ``model``, by name."""
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def merge_lora(model: nn.Module, merge: bool = True) -> int:
    """Replace every LoRA layer of ``model`` by its base layer, in place: with ``merge``, the
    adapter folded into the base weights (``W + scale * B A``); without, the adapter dropped.

    Returns:
        the number of layers replaced (0: ``model`` has none).
    """
    from peft.tuners.lora import LoraLayer

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in found:
        if merge:
            module.merge()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, module.get_base_layer())
    return len(found)


@contextmanager
def lora_training(model: nn.Module, rank: int, seed: int = 0) -> Iterator[Dict[str, nn.Parameter]]:
    """Train ``model`` through rank-``rank`` adapters (``rank = 0``: the model itself, nothing
    changed). Yields the parameters to optimise; on a normal exit the adapters are merged into the
    weights, on an exception dropped (the base weights were never trained); every parameter's
    ``requires_grad`` is restored either way.

    Raises:
        InputError: as :func:`add_lora`.
    """
    if rank == 0:
        yield dict(model.named_parameters())
        return
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    add_lora(model, clip_layers(model), rank, seed)
    ok = False
    try:
        yield lora_parameters(model)
        ok = True
    finally:
        merge_lora(model, merge=ok)
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))
