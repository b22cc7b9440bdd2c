"""What the dataset engine needs of a batch explainer, written down once.

A batch explainer is ``explain(pixels (N, 3, H, W), texts: N lists) -> N lists of rows`` (a row
is a dict: the columns of its job's table) with five declared attributes (:class:`BatchExplainer`).
:class:`BaseBatchExplainer` gives each its default, so that an explainer declares only what
differs (``scale.explain``'s, the benchmarks', segment's). The engine turns anything else it is
handed (a plain function, an object from before this Protocol) into one with
:func:`as_batch_explainer`, once, where a job starts; past that it reads attributes only.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Sequence, runtime_checkable

from torch import Tensor

#: One image's rows, per image of a batch.
Rows = List[List[Dict[str, Any]]]


@runtime_checkable
class BatchExplainer(Protocol):
    """The engine's view of an explainer.

    Attributes:
        splits_texts: ``True``: one row per text, and an image whose call fails is retried
            text by text (only the failing texts become error rows); ``False``: an image's texts
            go together (e.g. their argmax is the target), so a failing image is one error row
            and its rows are not counted per text.
        text_maps: the default table (:func:`.table.to_table`) has the word-map columns.
    """

    splits_texts: bool
    text_maps: bool

    def __call__(self, pixels: Tensor, texts: Sequence[Sequence[str]]) -> Rows:
        """``pixels (N, 3, H, W)`` (whatever the job's dataset gives: normalised floats, or
        uint8 images) and each image's texts -> each image's rows."""

    def config(self) -> Optional[Dict[str, Any]]:
        """What identifies the explainer in a job's configuration (``explain_dataset`` records it
        under ``"explainer"``), or ``None`` for nothing."""

    def refused_texts(self, texts: Sequence[str]) -> Dict[str, str]:
        """The texts of ``texts`` the explainer must not explain (e.g. longer than the model's
        context), each with its reason: error rows with the reason's ``code`` where it has one
        (:class:`captum_gradeclip.text_checks.Problem`: ``text_too_long``, ``unknown_words``,
        ``empty_text``), else ``"text_too_long"``."""

    def to_table(self, rows: Sequence[Dict[str, Any]]) -> Any:
        """A shard's rows (with the engine's ``image`` and ``text_index`` added) as an Arrow table."""


class BaseBatchExplainer:
    """The defaults of :class:`BatchExplainer`: one row per text (``splits_texts``), no word maps,
    nothing recorded, nothing refused, the rows in :func:`.table.to_table`'s schema (image maps).
    Subclass it and implement ``__call__``; override only what differs."""

    splits_texts: bool = True
    text_maps: bool = False

    def __call__(self, pixels: Tensor, texts: Sequence[Sequence[str]]) -> Rows:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(pixels, texts)")

    def config(self) -> Optional[Dict[str, Any]]:
        return None

    def refused_texts(self, texts: Sequence[str]) -> Dict[str, str]:
        return {}

    def to_table(self, rows: Sequence[Dict[str, Any]]) -> Any:
        from .table import to_table

        return to_table(rows, self.text_maps)


class _Adapted(BaseBatchExplainer):
    """A callable that does not declare all of :class:`BatchExplainer`'s attributes, with the
    defaults for the ones it lacks (the one place where they are looked up by name)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        for name in ("splits_texts", "text_maps"):
            if hasattr(fn, name):
                setattr(self, name, bool(getattr(fn, name)))
        for name in ("config", "refused_texts", "to_table"):
            if hasattr(fn, name):
                setattr(self, name, getattr(fn, name))

    def __call__(self, pixels: Tensor, texts: Sequence[Sequence[str]]) -> Rows:
        return self.fn(pixels, texts)


def as_batch_explainer(explainer: Any) -> BatchExplainer:
    """``explainer`` itself when it satisfies :class:`BatchExplainer` (e.g. a
    :class:`BaseBatchExplainer`), else a wrapper giving the defaults of the attributes it lacks.

    Raises:
        TypeError: ``explainer`` is not callable.
    """
    if isinstance(explainer, BatchExplainer):
        return explainer
    if not callable(explainer):
        raise TypeError(f"a batch explainer is a callable (pixels, texts) -> rows, got {type(explainer).__name__}")
    return _Adapted(explainer)
