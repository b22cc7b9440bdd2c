"""The one input check of texts, shared by every command (explain, explain-dataset, segment, the
analyses, the explorer): what a model cannot explain as written.

- **Longer than the text tower's context**: the tokenizer would cut it, and the map would be of
  another text than the one named.
- **Words outside a small vocabulary** (ShapesCLIP's 17 words, :attr:`LoadedCLIP.vocabulary`): its
  tokenizer splits an unknown word into letters and the map would explain the letters. Refused
  unless ``allow_unknown_words`` (then a warning).

:func:`text_problems` returns the reason for each refused text (a dataset job makes each an error
row); :func:`check_texts` raises on the first (a one-image command refuses the call).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .models import LoadedCLIP

__all__ = ["Problem", "check_texts", "text_problems", "token_count", "unknown_words"]


class Problem(str):
    """Why a text is refused (the message), with ``code``: ``"text_too_long"``, ``"unknown_words"``
    or ``"empty_text"`` (a dataset job's error rows carry it)."""

    code: str

    def __new__(cls, message: str, code: str) -> "Problem":
        self = super().__new__(cls, message)
        self.code = code
        return self


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


def unknown_words(clip: "LoadedCLIP", text: str) -> List[str]:
    """The words (and other characters) of ``text`` outside ``clip.vocabulary``, each once; none
    where the model has no small vocabulary."""
    if clip.vocabulary is None:
        return []
    from .shapes.model import words_outside

    return words_outside([text], clip.vocabulary)


def _vocabulary_reason(clip: "LoadedCLIP", unknown: Sequence[str]) -> str:
    return (f"the model does not know {', '.join(repr(w) for w in unknown)}: its tokenizer splits an unknown word "
            f"into letters and the map would explain those; it knows: {' '.join(clip.vocabulary or ())}")


def text_problems(clip: "LoadedCLIP", texts: Sequence[str], *, allow_unknown_words: bool = False,
                  cache: Optional[Dict[str, Tuple[int, Optional[int]]]] = None) -> Dict[str, Problem]:
    """The texts of ``texts`` the model cannot explain as written, each with the reason.

    Args:
        clip: the loaded model. texts: ``T`` texts.
        allow_unknown_words: explain words outside a small vocabulary anyway (a warning on stderr).
        cache: token counts by text, kept between calls (a dataset job asks about the same prompts
            in every batch).
    """
    out: Dict[str, Problem] = {}
    warned: List[str] = []
    for t in dict.fromkeys(texts):
        if not t.strip():
            out[t] = Problem("the text is empty: give the words to match", "empty_text")
            continue
        unknown = unknown_words(clip, t)
        if unknown and not allow_unknown_words:
            out[t] = Problem(f"{_vocabulary_reason(clip, unknown)}. Use its words, give another model, or allow "
                             "unknown words (--allow-unknown-words) to explain the letters anyway", "unknown_words")
            continue
        counted = cache.get(t) if cache is not None else None
        if counted is None:  # warn once per text (a dataset job asks in every batch)
            warned += unknown
        n, limit = counted if counted is not None else token_count(clip, t)
        if cache is not None:
            cache[t] = (n, limit)
        if limit is not None and n > limit:
            out[t] = Problem(f"the text is {n} tokens, longer than the model's context of {limit}: it would be "
                             "explained cut short; shorten it", "text_too_long")
    if warned:
        print(f"warning: {_vocabulary_reason(clip, list(dict.fromkeys(warned)))}", file=sys.stderr)
    return out


def check_texts(clip: "LoadedCLIP", texts: Sequence[str], *, allow_unknown_words: bool = False) -> None:
    """Raises :class:`~captum_gradeclip.errors.InputError` naming the first text of ``texts`` that
    :func:`text_problems` refuses, and why."""
    problems = text_problems(clip, texts, allow_unknown_words=allow_unknown_words)
    if problems:
        text, reason = next(iter(problems.items()))
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise InputError(f"text {shown!r}: {reason}")
