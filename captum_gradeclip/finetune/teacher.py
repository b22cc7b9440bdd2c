"""The teacher: a frozen copy of the model before fine-tuning, mining where each phrase matches.

For a batch of images and the phrases of each image's caption, the teacher explains every image
against every distinct phrase of the batch in one forward and one batched backward
(:meth:`~captum_gradeclip.ImageGradECLIP.attribute_all` on the last image block), and keeps each
image's own phrases. ``method="game"`` uses Chefer et al.'s relevance over all blocks instead (the
ablation that asks whether Grad-ECLIP's maps are what helps).
"""

from __future__ import annotations

import copy
from typing import Any, List, Sequence, Tuple

import torch
from torch import Tensor

from .. import ImageGradECLIP, ImageTextSimilarity

#: Explanation methods the teacher can mine with.
TEACHER_METHODS = ("gradeclip", "game")


def flatten_phrases(phrases: Sequence[Sequence[str]]) -> Tuple[Tensor, List[str]]:
    """``phrases`` per image -> ``(image_index (R,), flat (R,))``: one entry per (image, phrase)."""
    index = [i for i, ps in enumerate(phrases) for _ in ps]
    return torch.tensor(index, dtype=torch.long), [p for ps in phrases for p in ps]


class Teacher:
    """A frozen copy of a Hugging Face ``CLIPModel`` that mines (image, phrase) explanation maps.

    Args:
        model: the model before fine-tuning; it is copied (the copy: eval mode, no gradients), the
            original is not touched.
        tokenizer: the model's tokenizer (``processor.tokenizer``).
        method: ``"gradeclip"`` (default) or ``"game"``.

    Raises:
        ValueError: an unknown ``method``.
    """

    def __init__(self, model: Any, tokenizer: Any, method: str = "gradeclip") -> None:
        if method not in TEACHER_METHODS:
            raise ValueError(f"method must be one of {TEACHER_METHODS}, got {method!r}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.method = method

    def maps(self, pixel_values: Tensor, phrases: Sequence[Sequence[str]]) -> Tensor:
        """Teacher maps of each image's phrases: :func:`phrase_maps` of the frozen copy.

        Args:
            pixel_values: ``(N, 3, H, W)``. phrases: ``N`` non-empty lists of phrases.

        Returns:
            ``(R, h, w)``, one map per (image, phrase) in the order of :func:`flatten_phrases`.

        Raises:
            ValueError: see :func:`phrase_maps`.
        """
        return phrase_maps(self.model, self.tokenizer, pixel_values, phrases, method=self.method)


def _explainer(model: Any, sim: ImageTextSimilarity, method: str) -> Any:
    layers = model.vision_model.encoder.layers
    if method == "game":
        from ..baselines import GAME

        return GAME(sim, list(layers))
    return ImageGradECLIP(sim, layers[-1])


def phrase_maps(model: Any, tokenizer: Any, pixel_values: Tensor, phrases: Sequence[Sequence[str]], *,
                method: str = "gradeclip") -> Tensor:
    """Explanation maps of each image against each of its phrases, all phrases of the batch at once.

    Args:
        model: a Hugging Face ``CLIPModel`` (not modified). tokenizer: its tokenizer.
        pixel_values: ``(N, 3, H, W)``.
        phrases: ``N`` lists of phrases (each non-empty).
        method: ``"gradeclip"`` (last image block) or ``"game"`` (all blocks).

    Returns:
        ``(R, h, w)``, one map per (image, phrase) in the order of :func:`flatten_phrases`:
        ``attribute_all(pixel_values)[i, q]`` for image ``i`` and its phrase's index ``q`` among
        the batch's distinct phrases.

    Raises:
        ValueError: a different number of phrase lists than images, an image without phrases, or
            an unknown ``method``.
    """
    if method not in TEACHER_METHODS:
        raise ValueError(f"method must be one of {TEACHER_METHODS}, got {method!r}")
    if len(phrases) != len(pixel_values):
        raise ValueError(f"got {len(phrases)} phrase lists for {len(pixel_values)} images; give one per image")
    empty = [i for i, ps in enumerate(phrases) if not ps]
    if empty:
        raise ValueError(f"images {empty} have no phrases; every image needs at least one")
    image_index, flat = flatten_phrases(phrases)
    distinct = list(dict.fromkeys(flat))
    tok = tokenizer(distinct, padding=True, truncation=True, return_tensors="pt")
    sim = ImageTextSimilarity(model, tok.input_ids.to(pixel_values.device), tok.attention_mask.to(pixel_values.device))
    maps = _explainer(model, sim, method).attribute_all(pixel_values.detach())  # (N, Q, h, w)
    column = torch.tensor([distinct.index(p) for p in flat], dtype=torch.long)
    return maps[image_index.to(maps.device), column.to(maps.device)]


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
