"""The explorer's functional core: one image, its prompts and the chosen methods -> maps, scores
and timings (no Gradio here; :mod:`.ui` draws what :func:`explain` returns).

Every method explains all the prompts of the image in one call (``attribute_all`` where the
method has it, see :mod:`.methods`); the scores are the model's own cosine similarities.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Collection, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import InputError
from ..methods import GradECLIPOptions
from ..text_checks import text_problems
from .methods import GRAD_ECLIP, build, check_names

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ..models import LoadedCLIP

#: At most this many prompts per request (each is a row of the grid).
MAX_PROMPTS = 16


class AppInputError(InputError):
    """Input the explorer cannot explain; the message names the problem and the fix."""


@dataclass(frozen=True)
class ExplainRequest:
    """What to explain.

    Attributes:
        prompts: the ``T`` prompts (rows of the grid). methods: registered image method names
        (:func:`captum_gradeclip.methods.method_names`; columns). caption: a text whose words to explain ("" for none). options: Grad-ECLIP's settings.
    """

    prompts: Tuple[str, ...]
    methods: Tuple[str, ...] = (GRAD_ECLIP,)
    caption: str = ""
    options: GradECLIPOptions = field(default_factory=GradECLIPOptions)


@dataclass(frozen=True)
class WordMap:
    """The caption's word importances (Grad-ECLIP on the text tower's last 8 blocks).

    Attributes:
        text: the caption. words: its ``W`` tokens between start and end. importances: ``(W,)``.
        score: the caption's cosine similarity with the image.
    """

    text: str
    words: List[str]
    importances: Tensor
    score: float


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` returns.

    Attributes:
        request: the request. maps: method -> ``(T, h, w)`` (``(T, H, W)`` for pixel-space methods).
        scores: ``(T,)`` the model's cosine similarity of the image with each prompt.
        seconds: method -> wall time of its one call. words: the caption's word map, or ``None``.
    """

    request: ExplainRequest
    maps: Dict[str, Tensor]
    scores: Tensor
    seconds: Dict[str, float]
    words: Optional[WordMap] = None

    def arrays(self) -> Dict[str, Any]:
        """One float32 numpy array ``(h, w)`` per (prompt, method), keyed ``"prompt | method"``."""
        return {f"{p} | {m}": self.maps[m][i].numpy() for m in self.request.methods
                for i, p in enumerate(self.request.prompts)}

    def summary(self) -> Dict[str, Any]:
        """Scores, timings and settings, as JSON-ready values."""
        o = self.request.options
        return {"prompts": list(self.request.prompts), "methods": list(self.request.methods),
                "scores": {p: float(s) for p, s in zip(self.request.prompts, self.scores)},
                "seconds": self.seconds, "map_shapes": {m: list(v.shape[1:]) for m, v in self.maps.items()},
                "grad_eclip": {"layers": list(o.layers), "spatial": o.spatial, "relu": o.relu},
                "caption": None if self.words is None else {
                    "text": self.words.text, "score": self.words.score, "words": self.words.words,
                    "importances": [float(v) for v in self.words.importances]}}


def check_request(request: ExplainRequest, clip: Optional["LoadedCLIP"] = None) -> None:
    """Raises :class:`AppInputError` for no prompt, a blank one, too many, no method, an unknown
    method, or (with ``clip``) a text the model cannot explain as written: the check every
    command shares (:func:`captum_gradeclip.text_checks.text_problems`: longer than the model's
    context, or words outside a small vocabulary such as ShapesCLIP's)."""
    if not request.prompts:
        raise AppInputError("type at least one prompt, one per line (e.g. \"a red circle\")")
    if len(request.prompts) > MAX_PROMPTS:
        raise AppInputError(f"{len(request.prompts)} prompts: give at most {MAX_PROMPTS}, one per line")
    if any(not p.strip() for p in request.prompts):
        raise AppInputError("a prompt is blank: give the words to match, one prompt per line")
    if not request.methods:
        raise AppInputError("choose at least one method")
    try:
        check_names(request.methods)
    except ValueError as e:
        raise AppInputError(str(e)) from None
    if clip is not None:
        texts = request.prompts + ((request.caption,) if request.caption else ())
        for text, reason in text_problems(clip, texts).items():
            shown = text if len(text) <= 60 else f"{text[:57]}..."
            raise AppInputError(f"\"{shown}\": {reason}")


def caption_words(clip: "LoadedCLIP", pixels: Tensor, caption: str) -> WordMap:
    """Grad-ECLIP word importances of ``caption`` for the image ``pixels (1, 3, H, W)``."""
    from ..methods import build as build_method

    ids, mask = clip.tokens([caption])
    tsim = clip.text_similarity(pixels)
    extra = None if mask is None else (mask,)
    imp = build_method("grad-eclip", clip, tsim, kind="text").attribute(ids, 0, extra)
    with torch.no_grad():
        score = float((tsim(ids) if mask is None else tsim(ids, mask))[0, 0])
    e = int(tsim.eos_positions(ids)[0])
    return WordMap(caption, clip.decode(ids[0, 1:e]), imp[0, 1:e].detach().float(), score)


def explain(clip: "LoadedCLIP", image: "Image.Image", request: ExplainRequest,
            vocabulary: Optional[Collection[str]] = None) -> Explanation:
    """Explain ``image`` against ``request.prompts`` (``T``) with each of ``request.methods``.

    Args:
        clip: the model (as :func:`captum_gradeclip.models.load` returns it).
        image: a PIL image (RGB). request: what to explain.
        vocabulary: the model's words, to refuse a prompt it cannot read, where ``clip`` does not
            carry them already (``clip.vocabulary``: ShapesCLIP's, as :func:`~captum_gradeclip.models.load`
            returns it), or ``None``.

    Returns:
        :class:`Explanation`: maps ``(T, h, w)`` per method, scores ``(T,)``, seconds per method.

    Raises:
        AppInputError: see :func:`check_request`; a bad Grad-ECLIP layer index.
    """
    if vocabulary is not None:
        clip = dataclasses.replace(clip, vocabulary=tuple(vocabulary))
    check_request(request, clip)
    pixels = clip.pixels([image])
    sim = clip.image_similarity(*clip.tokens(list(request.prompts)))
    with torch.no_grad():
        scores = sim(pixels)[0].float()
    maps: Dict[str, Tensor] = {}
    seconds: Dict[str, float] = {}
    for name in request.methods:
        try:
            method = build(name, clip, sim, request.options)
        except ValueError as e:
            raise AppInputError(str(e)) from None
        t0 = time.perf_counter()
        maps[name] = method(pixels)[0].detach().float()
        seconds[name] = time.perf_counter() - t0
    words = caption_words(clip, pixels, request.caption) if request.caption.strip() else None
    return Explanation(request, maps, scores, seconds, words)
