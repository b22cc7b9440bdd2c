"""The dataset engine's typed records: an error row, what became of a shard's inputs, a run's
summary. Each is a frozen dataclass whose :meth:`to_dict` is exactly what the engine writes (an
error line of ``errors.jsonl``, a sums file's ``inputs``) or returned as a dict before these
records existed (the run summary), so the files on disk do not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

#: The ``code`` of an error row for a text longer than the model's context (counted in the
#: manifest's ``warnings.texts_too_long``).
TEXT_TOO_LONG = "text_too_long"


@dataclass(frozen=True)
class ErrorRow:
    """One input (an image, or one text of it) that could not be explained.

    Attributes:
        image: the input's key (``None`` when even the key could not be read).
        error: the reason, one line.
        text: the text, when only this text of the image failed (``None``: the whole image).
        code: a machine-readable kind (e.g. :data:`TEXT_TOO_LONG`), or ``None``.
        input: the input's index in the dataset: ties the row to its input in memory, never
            written.
    """

    image: Optional[str]
    error: str
    text: Optional[str] = None
    code: Optional[str] = None
    input: Optional[int] = None

    @property
    def per_text(self) -> bool:
        """Whether this row is about one text of the image (else about the whole image)."""
        return self.text is not None

    def to_dict(self) -> Dict[str, Any]:
        """The line written to ``errors.jsonl``: ``{"image", "error"[, "text"][, "code"]}``."""
        out: Dict[str, Any] = {"image": self.image, "error": self.error}
        if self.text is not None:
            out["text"] = self.text
        if self.code is not None:
            out["code"] = self.code
        return out


@dataclass(frozen=True)
class InputCounts:
    """What became of one shard's inputs (a sums file's ``inputs``, see
    :data:`.store.INPUT_COUNTS`): ``images = images_with_rows + images_only_in_errors`` and, for
    an explainer with one row per text, ``texts = rows + text_errors`` (``texts`` and
    ``text_errors`` are ``None`` for an explainer whose rows are not per text)."""

    images: int
    images_with_rows: int
    images_only_in_errors: int
    texts: Optional[int]
    rows: int
    text_errors: Optional[int]

    def to_dict(self) -> Dict[str, Optional[int]]:
        """The sums file's ``inputs`` object, keys in :data:`.store.INPUT_COUNTS` order."""
        return {"images": self.images, "images_with_rows": self.images_with_rows,
                "images_only_in_errors": self.images_only_in_errors, "texts": self.texts, "rows": self.rows,
                "text_errors": self.text_errors}


@dataclass(frozen=True)
class RunSummary:
    """What one run of a dataset job did (on every rank; the totals only on rank 0).

    Attributes:
        images: the dataset's items.
        images_this_run: items explained by this run (finished shards are skipped).
        skipped_shards: shards finished by an earlier run.
        wall_s: the slowest rank's loop time, in seconds.
        images_per_s: ``images_this_run / wall_s`` (``0.0`` when nothing ran).
        world_size: processes.
        rank: this process's rank (not part of :meth:`to_dict`).
        pairs, errors, shards, texts_too_long: the manifest's totals (rows, error rows, shards,
            texts longer than the model's context); ``None`` on ranks other than 0.
    """

    images: int
    images_this_run: int
    skipped_shards: int
    wall_s: float
    images_per_s: float
    world_size: int
    rank: int = 0
    pairs: Optional[int] = None
    errors: Optional[int] = None
    shards: Optional[int] = None
    texts_too_long: Optional[int] = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that reports)."""
        return self.rank == 0

    def to_dict(self) -> Dict[str, Any]:
        """The summary as the engine's dict: ``images``, ``images_this_run``, ``skipped_shards``,
        ``wall_s``, ``images_per_s``, ``world_size`` and, on rank 0, ``pairs``, ``errors``,
        ``shards``, ``texts_too_long``."""
        out: Dict[str, Any] = {"images": self.images, "images_this_run": self.images_this_run,
                               "skipped_shards": self.skipped_shards, "wall_s": self.wall_s,
                               "images_per_s": self.images_per_s, "world_size": self.world_size}
        if self.pairs is not None:
            out.update(pairs=self.pairs, errors=self.errors, shards=self.shards, texts_too_long=self.texts_too_long)
        return out
