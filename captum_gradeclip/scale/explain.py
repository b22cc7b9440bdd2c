"""Explaining one batch of images, each for its own texts: what the engine calls per batch.

A *batch explainer* is ``explain(pixels (N, 3, H, W), texts: N lists) -> N lists of rows``, a
row being ``{"text", "score", "map" (h, w)}`` (and ``"words"``, ``"word_map" (W,)`` for word
maps). :class:`CLIPExplainer` does it for a :class:`~captum_gradeclip.models.LoadedCLIP` with
ONE forward and ONE batched backward per batch (``ImageGradECLIP.attribute_all``): the texts of
the batch (their union, when images have different texts) are the forward function's ``T``
columns, and each image keeps its own columns. :class:`AttributeAllExplainer` wraps any
attribution with ``attribute_all`` whose columns are a fixed list of texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import InputError
from ..methods import GradECLIPOptions, build, get_method
from ..text_checks import text_problems
from .protocols import BaseBatchExplainer

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedCLIP

Rows = List[List[Dict[str, Any]]]


class _Scores:
    """A forward hook on a forward-function module that keeps its last output ``(N, K)``
    (the explained scores, without a second forward); removed by :meth:`remove`."""

    def __init__(self, module: Any) -> None:
        self.value: Optional[Tensor] = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: Any, inputs: Any, output: Tensor) -> None:
        self.value = output.detach()

    def remove(self) -> None:
        self._handle.remove()


def attribute_with_scores(attribution: Any, pixels: Tensor) -> Tuple[Tensor, Tensor]:
    """``(maps (N, K, h, w), scores (N, K))`` of ``attribution.attribute_all(pixels)``; the scores
    are read from the explained forward (a hook on ``forward_func`` when it is a module), else
    computed by one no-grad call of ``forward_func``."""
    fn = attribution.forward_func
    if isinstance(fn, torch.nn.Module):
        rec = _Scores(fn)
        try:
            maps = attribution.attribute_all(pixels)
        finally:
            rec.remove()
        scores = rec.value
    else:
        maps = attribution.attribute_all(pixels)
        with torch.no_grad():
            scores = fn(pixels)
    return maps, scores.reshape(len(pixels), -1).float()


def _rows(maps: Tensor, scores: Tensor, columns: Dict[str, int], texts: Sequence[Sequence[str]]) -> Rows:
    """Each image's rows, from ``maps (N, K, h, w)`` and ``scores (N, K)`` over the ``columns``."""
    maps = maps.detach().to("cpu", torch.float32)
    scores = scores.detach().to("cpu", torch.float32)
    return [[{"text": t, "score": float(scores[n, columns[t]]), "map": maps[n, columns[t]]} for t in ts]
            for n, ts in enumerate(texts)]


class AttributeAllExplainer(BaseBatchExplainer):
    """Any attribution with ``attribute_all(pixels (N, 3, H, W)) -> (N, K, h, w)`` whose ``K``
    columns are the fixed ``texts``: every image of the dataset must ask for texts among them.

    Raises (when called):
        ValueError: an image asks for a text that is not one of the columns.
    """

    def __init__(self, attribution: Any, texts: Sequence[str]) -> None:
        self.attribution, self.columns = attribution, {t: k for k, t in enumerate(texts)}

    def config(self) -> Dict[str, Any]:
        """What identifies this explainer in a job's configuration."""
        return {"explainer": type(self.attribution).__name__, "texts": list(self.columns)}

    def __call__(self, pixels: Tensor, texts: Sequence[Sequence[str]]) -> Rows:
        missing = sorted({t for ts in texts for t in ts} - set(self.columns))
        if missing:
            raise ValueError(f"texts {missing[:3]} are not columns of the explained forward function")
        maps, scores = attribute_with_scores(self.attribution, pixels)
        return _rows(maps, scores, self.columns, texts)


@dataclass(frozen=True)
class ExplainerOptions:
    """What :class:`CLIPExplainer` computes, declared once: the explainer takes it, a job's
    configuration records it (:meth:`describe`).

    Attributes:
        method: an image method of :mod:`captum_gradeclip.methods`' registry (default ``"grad-eclip"``).
        gradeclip: Grad-ECLIP's settings (layers, spatial, relu, single_head, text_layers), the
            same record every command uses; the other methods ignore it.
        text_maps: also explain each text against its image: Grad-ECLIP on the text tower's last
            ``gradeclip.text_layers`` blocks (one more image forward, and a text forward and
            backward, per batch).
        text_chunk: texts explained per backward (bounds memory for many prompts).
        allow_unknown_words: explain texts with words outside a small vocabulary (ShapesCLIP's)
            instead of making them error rows.

    Raises:
        ValueError: ``text_chunk`` below 1, an unknown method.
    """

    method: str = "grad-eclip"
    gradeclip: GradECLIPOptions = GradECLIPOptions()
    text_maps: bool = False
    text_chunk: int = 64
    allow_unknown_words: bool = False

    def __post_init__(self) -> None:
        get_method(self.method)
        if self.text_chunk < 1:
            raise InputError(f"text_chunk must be at least 1, got {self.text_chunk}")

    def describe(self) -> Dict[str, Any]:
        """The options as a job's configuration records them."""
        g = self.gradeclip
        described = {"method": self.method, "text_maps": bool(self.text_maps),
                     "text_layers": g.text_layers if self.text_maps else None, "text_chunk": self.text_chunk}
        if get_method(self.method).uses_options or self.text_maps:
            described.update(g.describe())
        if self.allow_unknown_words:
            described["allow_unknown_words"] = True
        return described


def explainer_options(method: str = "grad-eclip", *, layers: Sequence[int] = (-1,), spatial: str = "cosine",
                      single_head: bool = False, relu: bool = True, text_layers: int = 8,
                      **options: Any) -> ExplainerOptions:
    """:class:`ExplainerOptions` from flat keywords (``layers``, ``spatial``, ... go into its
    :class:`~captum_gradeclip.methods.GradECLIPOptions`); a ``gradeclip=`` record is taken as is."""
    if "gradeclip" not in options:
        options["gradeclip"] = GradECLIPOptions(tuple(layers), spatial, relu, single_head, text_layers)
    return ExplainerOptions(method=method, **options)


class CLIPExplainer(BaseBatchExplainer):
    """Maps of a registered image method (default Grad-ECLIP) and, with ``text_maps``, Grad-ECLIP
    word maps, for a loaded CLIP: the engine's batch explainer.

    Args:
        clip: the model, its preprocessing and layers.
        device: where the inputs go (the model must already be there).
        options: an :class:`ExplainerOptions`; or, instead, its fields as keywords (``method``,
            ``text_maps``, ``text_chunk``, ``allow_unknown_words``) with Grad-ECLIP's
            (``layers``, ``spatial``, ``single_head``, ``relu``, ``text_layers``) flat or as
            ``gradeclip=GradECLIPOptions(...)``.
    """

    def __init__(self, clip: "LoadedCLIP", *, device: Any = "cpu", options: Optional[ExplainerOptions] = None,
                 **keywords: Any) -> None:
        self.clip, self.device = clip, torch.device(device)
        self.options = options if options is not None else explainer_options(**keywords)
        self.text_maps = self.options.text_maps
        self._cached: Dict[Tuple[str, ...], Any] = {}
        self._lengths: Dict[str, Tuple[int, Optional[int]]] = {}

    @staticmethod
    def describe(**keywords: Any) -> Dict[str, Any]:
        """The options (:func:`explainer_options`' keywords) as a job's configuration records them
        (before loading a model)."""
        return explainer_options(**keywords).describe()

    def config(self) -> Dict[str, Any]:
        """:meth:`ExplainerOptions.describe` of this explainer's options."""
        return self.options.describe()

    def refused_texts(self, texts: Sequence[str]) -> Dict[str, str]:
        """The texts the model cannot explain as written (:func:`~captum_gradeclip.text_checks.text_problems`:
        longer than the text tower's context, words outside a small vocabulary), each with the
        reason: the engine makes them error rows and counts them in the manifest."""
        return text_problems(self.clip, texts, allow_unknown_words=self.options.allow_unknown_words,
                             cache=self._lengths)

    def _tokens(self, texts: Sequence[str]) -> Tuple[Tensor, Optional[Tensor]]:
        ids, mask = self.clip.tokens(texts)
        return ids.to(self.device), None if mask is None else mask.to(self.device)

    def _image_explainer(self, union: Tuple[str, ...]) -> Any:
        """The method's :class:`~captum_gradeclip.methods.Explainer` whose columns are ``union``
        (kept while the texts stay the same: a ``--prompts`` job embeds its prompts once)."""
        if union not in self._cached:
            if len(self._cached) >= 64:  # per-image texts (--pairs): keep the cache bounded
                self._cached.clear()
            sim = self.clip.image_similarity(*self._tokens(union))
            self._cached[union] = build(self.options.method, self.clip, sim, self.options.gradeclip)
        return self._cached[union]

    def __call__(self, pixels: Tensor, texts: Sequence[Sequence[str]]) -> Rows:
        """Rows for ``pixels (N, 3, H, W)``, image ``n`` explained for ``texts[n]``. The union of
        the texts is explained ``text_chunk`` columns at a time (one forward and one batched
        backward each), which bounds memory for large prompt sets (e.g. 1000 class prompts)."""
        union = tuple(sorted({t for ts in texts for t in ts}))
        columns = {t: k for k, t in enumerate(union)}
        pixels = pixels.to(self.device)
        parts = [attribute_with_scores(self._image_explainer(union[i:i + self.options.text_chunk]), pixels)
                 for i in range(0, len(union), self.options.text_chunk)]
        maps, scores = torch.cat([m for m, _ in parts], 1), torch.cat([s for _, s in parts], 1)
        rows = _rows(maps, scores, columns, texts)
        if self.text_maps:
            self._add_word_maps(rows, pixels, union, columns)
        return rows

    def _add_word_maps(self, rows: Rows, pixels: Tensor, union: Tuple[str, ...], columns: Dict[str, int]) -> None:
        """``words`` and ``word_map (W,)`` (SOS and EOS excluded) of every row: each text against
        every image of the batch in one ``TextGradECLIP.attribute_all``."""
        ids, mask = self._tokens(union)
        tsim = self.clip.text_similarity(pixels)
        expl = build("grad-eclip", self.clip, tsim, self.options.gradeclip, kind="text")
        words = expl.attribute_all(ids, additional_forward_args=None if mask is None else (mask,))
        words = words.to("cpu", torch.float32)  # (T, N, L)
        eos = tsim.eos_positions(ids).tolist()
        ids = ids.cpu()
        for n, image_rows in enumerate(rows):
            for row in image_rows:
                k = columns[row["text"]]
                row["words"] = self.clip.decode(ids[k, 1:eos[k]])
                row["word_map"] = words[k, n, 1:eos[k]]
