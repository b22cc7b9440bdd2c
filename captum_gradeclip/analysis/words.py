"""Sub-word tokens merged into words, for the word maps of CLIP's text tower.

CLIP's byte-level BPE (OpenAI's, Hugging Face's ``CLIPTokenizer``, open_clip's
``SimpleTokenizer``, and ShapesCLIP's word-level vocabulary built the same way) marks the last
token of every word with the suffix ``</w>``: ``"pinkish"`` -> ``["pink", "ish</w>"]``. A word is
therefore the run of tokens up to and including one that ends in ``</w>``. The tokenizer's
pre-split makes punctuation its own word (``","`` -> ``",</w>"``); such words, and the start,
end and padding tokens, are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedCLIP

__all__ = ["WordSpan", "bpe_tokens", "merge_words", "word_values"]

END = "</w>"
SPECIAL = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>")
_ALNUM = re.compile(r"[^\W_]", re.UNICODE)


@dataclass(frozen=True)
class WordSpan:
    """A word of a text: ``text`` (lower-cased, ``</w>`` removed), its ``position`` among the
    text's kept words (from 0), and its tokens ``start:end`` (indices into the token list given)."""

    text: str
    position: int
    start: int
    end: int


def _close(spans: List[WordSpan], tokens: Sequence[str], start: int, end: int) -> None:
    """Append the word of ``tokens[start:end]`` to ``spans`` unless it is punctuation."""
    text = "".join(t for t in tokens[start:end] if t not in SPECIAL).replace(END, "").lower()
    if _ALNUM.search(text):
        spans.append(WordSpan(text, len(spans), start, end))


def merge_words(tokens: Sequence[str]) -> List[WordSpan]:
    """The words of ``L`` BPE tokens (``</w>`` on each word's last token; a trailing run
    without one is a word too). Special tokens are skipped; words without a letter or digit
    (punctuation) are dropped.

    Example: ``["a</w>", "pink", "ish</w>", "dog</w>", ".</w>"]`` -> ``a`` (0:1), ``pinkish``
    (1:3), ``dog`` (3:4).
    """
    spans: List[WordSpan] = []
    start = None
    for i, tok in enumerate(tokens):
        if tok in SPECIAL:
            continue
        start = i if start is None else start
        if tok.endswith(END):
            _close(spans, tokens, start, i + 1)
            start = None
    if start is not None:
        _close(spans, tokens, start, len(tokens))
    return spans


def word_values(values: Tensor, spans: Sequence[WordSpan]) -> Tensor:
    """Token values ``(L,)`` summed over each word's tokens: ``(W,)``."""
    if not spans:
        return values.new_zeros(0)
    return torch.stack([values[s.start:s.end].sum() for s in spans])


def _hf_tokens(tokenizer: Any, ids: Sequence[int]) -> List[str]:
    return list(tokenizer.convert_ids_to_tokens(list(ids)))


def _id_to_token(tokenizer: Any, ids: Sequence[int]) -> List[str]:
    """open_clip: ``SimpleTokenizer`` (``decoder`` id -> BPE token) or its ``HFTokenizer`` wrapper."""
    if hasattr(tokenizer, "decoder") and isinstance(tokenizer.decoder, dict):
        return [tokenizer.decoder[int(i)] for i in ids]
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "convert_ids_to_tokens"):
        return _hf_tokens(tokenizer.tokenizer, ids)
    raise TypeError(f"cannot read BPE tokens from a {type(tokenizer).__name__}: expected open_clip's "
                    "SimpleTokenizer (with .decoder) or a Hugging Face tokenizer")


def _eos(tokenizer: Any, ids: Tensor) -> int:
    """The position of the end token in ``ids (L,)``: the tokenizer's end id, else the largest id."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    end = getattr(tok, "eos_token_id", None) or getattr(tok, "eot_token_id", None)
    if end is None and isinstance(getattr(tok, "encoder", None), dict):
        end = tok.encoder.get("<|endoftext|>") or tok.encoder.get("<end_of_text>")
    hits = (ids == end).nonzero() if end is not None else ids.new_zeros(0, 1)
    return int(hits[0, 0]) if len(hits) else int(ids.argmax())


def bpe_tokens(clip: "LoadedCLIP", text: str) -> Tuple[List[str], int]:
    """The BPE tokens of ``text`` between its start and end tokens, ``</w>`` kept, as the
    model's tokenizer cuts it (its truncation included), and the end token's position ``e``:
    the tokens are positions ``1:e`` of the ids (the positions of a ``word_map``)."""
    ids, _ = clip.tokens([text])
    ids = ids[0]
    e = _eos(clip.tokenizer, ids)
    inner = ids[1:e].tolist()
    toks = _hf_tokens(clip.tokenizer, inner) if clip.family == "hf" else _id_to_token(clip.tokenizer, inner)
    return toks, e
