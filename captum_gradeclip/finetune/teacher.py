"""The teacher: a frozen copy of the model before fine-tuning, mining where each phrase matches.

For a batch of images and the phrases of each image's caption, the teacher explains every image
against every distinct phrase of the batch in one forward and one batched backward
(:meth:`~captum_gradeclip.ImageGradECLIP.attribute_all` on the last image block), and keeps each
image's own phrases. ``method="game"`` uses Chefer et al.'s relevance over all blocks instead (the
ablation that asks whether Grad-ECLIP's maps are what helps).

The teacher reads a model only through :class:`captum_gradeclip.models.LoadedCLIP` (its
``image_layers``, ``tokens`` and ``image_similarity``), so it mines with any family the package
loads: Hugging Face, open_clip / OpenAI CLIP, or one registered with ``models.register_family``.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import InputError

#: Explanation methods the teacher can mine with (the methods registry's kebab-case names).
TEACHER_METHODS = ("grad-eclip", "game")
#: Old names, and the name each is called now.
RENAMED = {"gradeclip": "grad-eclip"}


def check_method(method: str) -> str:
    """``method`` if the teacher knows it.

    Raises:
        InputError: an old name (the message names the new one) or an unknown method.
    """
    if method in RENAMED:
        raise InputError(f"the teacher method {method!r} is now called {RENAMED[method]!r}")
    if method not in TEACHER_METHODS:
        raise InputError(f"the teacher method must be one of {TEACHER_METHODS}, got {method!r}")
    return method


def explainer(method: str, clip: Any, similarity: Any) -> Any:
    """The method ``method`` over ``clip``'s image layers, built by the method registry
    (:func:`captum_gradeclip.methods.build`: Grad-ECLIP on the last layer, GAME over all of them):
    the one place the teacher looks a method up. ``attribute_all(pixels (N, 3, H, W))`` gives
    ``(N, T, h, w)``."""
    from ..methods import build

    return build(method, clip, similarity)


def flatten_phrases(phrases: Sequence[Sequence[str]]) -> Tuple[Tensor, List[str]]:
    """``phrases`` per image -> ``(image_index (R,), flat (R,))``: one entry per (image, phrase)."""
    index = [i for i, ps in enumerate(phrases) for _ in ps]
    return torch.tensor(index, dtype=torch.long), [p for ps in phrases for p in ps]


def hf_clip(model: Any, tokenizer: Any) -> Any:
    """A Hugging Face ``CLIPModel`` and its tokenizer as a :class:`~captum_gradeclip.models.LoadedCLIP`
    (no image processor: the teacher is given pixels)."""
    from ..models import wrap_hf

    return wrap_hf(model, SimpleNamespace(tokenizer=tokenizer))


def _as_clip(model: Any, tokenizer: Optional[Any]) -> Any:
    from ..models import LoadedCLIP

    if isinstance(model, LoadedCLIP):
        return model
    if tokenizer is None:
        raise InputError("a model without its tokenizer: pass a LoadedCLIP (models.load, wrap_hf, wrap_open_clip) "
                         "or a Hugging Face CLIPModel and its tokenizer")
    return hf_clip(model, tokenizer)


class Teacher:
    """A frozen copy of a CLIP that mines (image, phrase) explanation maps.

    Args:
        model: the model before fine-tuning: a :class:`~captum_gradeclip.models.LoadedCLIP` of any
            family (Hugging Face, open_clip, ...) or a Hugging Face ``CLIPModel``; its model is
            copied (the copy: eval mode, no gradients), the original is not touched.
        tokenizer: with a ``CLIPModel``: its tokenizer (``processor.tokenizer``); else unused.
        method: ``"grad-eclip"`` (default) or ``"game"``.

    Raises:
        InputError: an unknown ``method`` (the old ``"gradeclip"``: a message naming the new name).
    """

    def __init__(self, model: Any, tokenizer: Optional[Any] = None, method: str = "grad-eclip") -> None:
        self.method = check_method(method)
        clip = _as_clip(model, tokenizer)
        # one deepcopy of the record: its layers stay the copy's modules; the tokenizer is shared
        memo = {id(clip.tokenizer): clip.tokenizer, id(clip.preprocess): clip.preprocess}
        self.clip = copy.deepcopy(clip, memo)
        self.clip.model.eval().requires_grad_(False)

    @property
    def model(self) -> Any:
        """The frozen copy of the model."""
        return self.clip.model

    def maps(self, pixel_values: Tensor, phrases: Sequence[Sequence[str]]) -> Tensor:
        """Teacher maps of each image's phrases: :func:`clip_maps` of the frozen copy.

        Args:
            pixel_values: ``(N, 3, H, W)``. phrases: ``N`` non-empty lists of phrases.

        Returns:
            ``(R, h, w)``, one map per (image, phrase) in the order of :func:`flatten_phrases`.

        Raises:
            ValueError: see :func:`clip_maps`.
        """
        return clip_maps(self.clip, pixel_values, phrases, method=self.method)


def clip_maps(clip: Any, pixel_values: Tensor, phrases: Sequence[Sequence[str]], *,
              method: str = "grad-eclip") -> Tensor:
    """Explanation maps of each image against each of its phrases, all phrases of the batch at once.

    Args:
        clip: a :class:`~captum_gradeclip.models.LoadedCLIP` (its model is not modified): its
            ``image_layers``, ``tokens(texts)`` and ``image_similarity(ids, mask)`` are used.
        pixel_values: ``(N, 3, H, W)``.
        phrases: ``N`` lists of phrases (each non-empty).
        method: ``"grad-eclip"`` (last image layer) or ``"game"`` (all layers).

    Returns:
        ``(R, h, w)``, one map per (image, phrase) in the order of :func:`flatten_phrases`:
        ``attribute_all(pixel_values)[i, q]`` for image ``i`` and its phrase's index ``q`` among
        the batch's distinct phrases.

    Raises:
        InputError: a different number of phrase lists than images, an image without phrases, or
            an unknown ``method``.
    """
    check_method(method)
    if len(phrases) != len(pixel_values):
        raise InputError(f"got {len(phrases)} phrase lists for {len(pixel_values)} images; give one per image")
    empty = [i for i, ps in enumerate(phrases) if not ps]
    if empty:
        raise InputError(f"images {empty} have no phrases; every image needs at least one")
    image_index, flat = flatten_phrases(phrases)
    distinct = list(dict.fromkeys(flat))
    ids, mask = clip.tokens(distinct)
    dev = pixel_values.device
    sim = clip.image_similarity(ids.to(dev), None if mask is None else mask.to(dev))
    maps = explainer(method, clip, sim).attribute_all(pixel_values.detach())  # (N, Q, h, w)
    column = torch.tensor([distinct.index(p) for p in flat], dtype=torch.long)
    return maps[image_index.to(maps.device), column.to(maps.device)]


def phrase_maps(model: Any, tokenizer: Any, pixel_values: Tensor, phrases: Sequence[Sequence[str]], *,
                method: str = "grad-eclip") -> Tensor:
    """:func:`clip_maps` of a Hugging Face ``CLIPModel`` (not modified) and its tokenizer.

    Args:
        pixel_values: ``(N, 3, H, W)``. phrases: ``N`` non-empty lists. method: as :func:`clip_maps`.

    Returns:
        ``(R, h, w)``, as :func:`clip_maps`.

    Raises:
        InputError: as :func:`clip_maps`.
    """
    return clip_maps(hf_clip(model, tokenizer), pixel_values, phrases, method=method)


class MomentumModel:
    """A slowly updated (EMA) copy of the model being fine-tuned: the self-distillation anchor of
    the image–caption term (:class:`~.loss.RegionPhraseLoss`'s ``distill``).

    Args:
        model: the model at the start of fine-tuning; it is copied (eval mode, no gradients).
        momentum: the EMA decay ``m`` in ``[0, 1)``: after each optimiser step,
            ``anchor <- m * anchor + (1 - m) * model`` (floating-point buffers are averaged too).

    Raises:
        ValueError: ``momentum`` outside ``[0, 1)``.
    """

    def __init__(self, model: Any, momentum: float) -> None:
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.momentum = float(momentum)

    @torch.no_grad()
    def update(self, model: Any) -> None:
        """One EMA step towards ``model``'s current weights (same architecture)."""
        ours = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                ours[name].mul_(self.momentum).add_(value.detach().to(ours[name].device), alpha=1 - self.momentum)
            else:
                ours[name].copy_(value)

    @torch.no_grad()
    def embeds(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """``(image_embeds (N, E), text_embeds (T, E))`` of the copy, without gradients."""
        from ..forward import features

        image = features(self.model.get_image_features(pixel_values=pixel_values))
        text = features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        return image, text
