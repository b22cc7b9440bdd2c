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


def token_count(clip: "LoadedCLIP", text: str) -> Tuple[int, Optional[int]]:
    """``(tokens of text with its start and end tokens, the text tower's context)``; the context
    is ``None`` where this tokenizer does not tell (then nothing is refused)."""
    tok = clip.tokenizer
    if hasattr(tok, "model_max_length") and callable(tok):  # Hugging Face
        config = getattr(getattr(clip.model, "config", None), "text_config", None)
        limit = getattr(config, "max_position_embeddings", None) or tok.model_max_length
        return len(tok(text, truncation=False, verbose=False).input_ids), limit
    inner = getattr(tok, "tokenizer", tok)  # open_clip / OpenAI: SimpleTokenizer with .encode
    limit = getattr(tok, "context_length", None) or getattr(inner, "context_length", None)
    if limit is None or not hasattr(inner, "encode"):
        return 0, None
    return len(inner.encode(text)) + 2, limit


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
    """The method options of :class:`CLIPExplainer`, declared once: the explainer takes them, a
    job's configuration records them (:meth:`describe`).

    Attributes:
        layers: indices into ``clip.image_layers`` (default: the last).
        spatial, single_head: as in :class:`~captum_gradeclip.ImageGradECLIP`.
        text_maps: also explain each text against its image: ``TextGradECLIP`` on the text
            tower's last ``text_layers`` blocks (one more image forward, and a text forward and
            backward, per batch).
        text_chunk: texts explained per backward (bounds memory for many prompts).

    Raises:
        ValueError: ``text_chunk`` below 1.
    """

    layers: Tuple[int, ...] = (-1,)
    spatial: str = "cosine"
    single_head: bool = False
    text_maps: bool = False
    text_layers: int = 8
    text_chunk: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.text_chunk < 1:
            raise ValueError(f"text_chunk must be at least 1, got {self.text_chunk}")

    def describe(self) -> Dict[str, Any]:
        """The options as a job's configuration records them."""
        return {"method": "ImageGradECLIP", "layers": list(self.layers), "spatial": self.spatial,
                "single_head": bool(self.single_head), "text_maps": bool(self.text_maps),
                "text_layers": self.text_layers if self.text_maps else None, "text_chunk": self.text_chunk}


class CLIPExplainer(BaseBatchExplainer):
    """Grad-ECLIP image maps (and, with ``text_maps``, word maps) for a loaded CLIP.

    Args:
        clip: the model, its preprocessing and layers.
        device: where the inputs go (the model must already be there).
        **options: :class:`ExplainerOptions` (``layers``, ``spatial``, ``single_head``,
            ``text_maps``, ``text_layers``, ``text_chunk``).
    """

    def __init__(self, clip: "LoadedCLIP", *, device: Any = "cpu", **options: Any) -> None:
        self.clip, self.options, self.device = clip, ExplainerOptions(**options), torch.device(device)
        self.text_maps = self.options.text_maps
        self._cached: Dict[Tuple[str, ...], Any] = {}
        self._lengths: Dict[str, Tuple[int, Optional[int]]] = {}

    @staticmethod
    def describe(**options: Any) -> Dict[str, Any]:
        """The method options (:class:`ExplainerOptions`) as a job's configuration records them
        (before loading a model)."""
        return ExplainerOptions(**options).describe()

    def config(self) -> Dict[str, Any]:
        """:meth:`describe` of this explainer's options."""
        return self.options.describe()

    def refused_texts(self, texts: Sequence[str]) -> Dict[str, str]:
        """The texts longer than the text tower's context (the tokenizer would cut them, and the
        map would be of another text than the row says), each with the reason: the engine makes
        them error rows (``"code": "text_too_long"``) and counts them in the manifest."""
        out = {}
        for t in texts:
            if t not in self._lengths:
                self._lengths[t] = token_count(self.clip, t)
            n, limit = self._lengths[t]
            if limit is not None and n > limit:
                out[t] = (f"the text is {n} tokens, longer than the model's context of {limit}: it would be "
                          "explained cut short; shorten it")
        return out

    def _tokens(self, texts: Sequence[str]) -> Tuple[Tensor, Optional[Tensor]]:
        ids, mask = self.clip.tokens(texts)
        return ids.to(self.device), None if mask is None else mask.to(self.device)

    def _image_explainer(self, union: Tuple[str, ...]) -> Any:
        """The ``ImageGradECLIP`` whose columns are ``union`` (kept while the texts stay the same:
        a ``--prompts`` job embeds its prompts once)."""
        from .._core import ImageGradECLIP

        if union not in self._cached:
            if len(self._cached) >= 64:  # per-image texts (--pairs): keep the cache bounded
                self._cached.clear()
            sim = self.clip.image_similarity(*self._tokens(union))
            layers = [self.clip.image_layers[i] for i in self.options.layers]
            self._cached[union] = ImageGradECLIP(sim, layers if len(layers) > 1 else layers[0],
                                                 spatial=self.options.spatial, single_head=self.options.single_head)
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
        from .._core import TextGradECLIP

        ids, mask = self._tokens(union)
        tsim = self.clip.text_similarity(pixels)
        expl = TextGradECLIP(tsim, self.clip.text_layers[-self.options.text_layers:],
                             spatial=self.options.spatial, single_head=self.options.single_head)
        words = expl.attribute_all(ids, additional_forward_args=None if mask is None else (mask,))
        words = words.to("cpu", torch.float32)  # (T, N, L)
        eos = tsim.eos_positions(ids).tolist()
        ids = ids.cpu()
        for n, image_rows in enumerate(rows):
            for row in image_rows:
                k = columns[row["text"]]
                row["words"] = self.clip.decode(ids[k, 1:eos[k]])
                row["word_map"] = words[k, n, 1:eos[k]]
