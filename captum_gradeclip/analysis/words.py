"""Words of a caption, two ways that agree: the caption's own characters, and the sub-word tokens
of the model's tokenizer merged into words.

**Characters** (:func:`caption_words`, :func:`find_phrase`, :func:`locate_phrases`): a word is a
run of letters and digits, joined by inner apostrophes or hyphens (``"dog's"``, ``"hot-dog"``);
everything else separates words. A phrase is found as a run of whole words, case-insensitive,
punctuation between words ignored: ``"a cat"`` is not in ``"a catamaran"``, ``"an"`` is not in
``"cyan"``, and ``"a cat"`` is in ``"a dog, a cat."``. Everything that locates a phrase
(decomposition's deletion, its check, the phrase weights, the phrase miner) calls these.

**Tokens** (:func:`merge_words`), by the tokenizer's scheme (:data:`SCHEMES`):

- ``"bpe"``: CLIP's byte-level BPE (OpenAI's, HF ``CLIPTokenizer``, open_clip's
  ``SimpleTokenizer``, ShapesCLIP) marks a word's *last* token with ``</w>``;
- ``"wordpiece"``: BERT (BLIP's text tower) marks a word's *continuation* tokens with ``##``;
- ``"sentencepiece"``: SigLIP's (T5 / Gemma) marks a word's *first* token with ``▁``.

:func:`word_scheme` reads the scheme off a tokenizer's vocabulary; a scheme it does not know is an
:class:`~captum_gradeclip.errors.InputError`, never one word per caption. Start, end and padding
tokens and words without a letter or digit (punctuation) are dropped. Two choices hold for every
scheme: a clitic (``'s``, ``'t``, ``'re``, ``'ve``, ``'m``, ``'ll``, ``'d``) is **attached** to
the word before it (``"dog's"`` is one word, its importance the dog's: CLIP's BPE and BERT cut it
off, SentencePiece does not, and attaching it makes all three agree with the caption's characters);
a run of digits is one word (CLIP's BPE cuts ``"2017"`` into four one-digit words).

:func:`align_words` places each merged word on the caption's characters, so a phrase's character
span (:func:`find_phrase`) selects exactly the tokens of its words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedCLIP

__all__ = ["SCHEMES", "PhraseSpan", "WordSpan", "align_words", "bpe_tokens", "caption_words", "find_phrase",
           "locate_phrases", "merge_words", "word_scheme", "word_values"]

END = "</w>"
WORDPIECE = "##"
METASPACE = "\u2581"
#: The tokenizer schemes :func:`merge_words` reads.
SCHEMES: Tuple[str, ...] = ("bpe", "wordpiece", "sentencepiece")
SPECIAL = ("<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>", "[CLS]", "[SEP]", "[PAD]",
           "[MASK]", "<s>", "</s>", "<pad>", "<bos>", "<eos>")
CLITICS = frozenset({"s", "t", "re", "ve", "m", "ll", "d"})
_ALNUM = re.compile(r"[^\W_]", re.UNICODE)
_WORD = re.compile(r"[^\W_]+(?:['\u2019\-][^\W_]+)*", re.UNICODE)


@dataclass(frozen=True)
class WordSpan:
    """A word of a text: ``text`` (lower-cased, the scheme's markers removed), its ``position``
    among the text's kept words (from 0), and its tokens ``start:end`` (indices into the token list given)."""

    text: str
    position: int
    start: int
    end: int


@dataclass(frozen=True)
class PhraseSpan:
    """Where a phrase is in its caption: characters ``start:end``, and ``occurrences``, how many
    whole-word occurrences the caption holds (more than 1: the phrase was *repeated* and this span
    is the one :func:`locate_phrases` chose)."""

    phrase: str
    start: int
    end: int
    occurrences: int = 1


# ---- words of a caption's characters --------------------------------------------------------
def caption_words(text: str) -> List[Tuple[str, int, int]]:
    """The whole words of ``text``: ``(word lower-cased, start, end)`` character offsets."""
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _occurrences(caption: str, phrase: str) -> List[Tuple[int, int]]:
    words = caption_words(caption)
    want = [w for w, _, _ in caption_words(phrase)]
    if not want:
        return []
    n = len(want)
    return [(words[i][1], words[i + n - 1][2]) for i in range(len(words) - n + 1)
            if [w for w, _, _ in words[i:i + n]] == want]


def find_phrase(caption: str, phrase: str) -> Tuple[int, int]:
    """The characters ``(start, end)`` of the first whole-word occurrence of ``phrase`` in
    ``caption`` (case-insensitive; punctuation between words ignored):
    ``find_phrase("a catamaran next to a cat", "a cat") -> (20, 25)``.

    Raises:
        InputError: ``phrase`` is not a string with a word, or not a run of the caption's words.
    """
    if not isinstance(phrase, str) or not caption_words(phrase):
        raise InputError(f"a phrase must be a string holding a word, got {phrase!r}")
    hits = _occurrences(caption, phrase)
    if not hits:
        raise InputError(f"the phrase {phrase!r} is not in the caption {caption!r} (as whole words)")
    return hits[0]


def locate_phrases(caption: str, phrases: Sequence[str]) -> List[PhraseSpan]:
    """Each phrase's span, resolved explicitly: phrase ``p`` takes its **leftmost whole-word
    occurrence that overlaps none of the phrases before it** (so a phrase listed twice takes its
    two occurrences, and ``["a small dog", "dog"]`` in ``"a small dog and a dog"`` takes the second
    ``dog``). A phrase that occurs more than once is flagged by ``occurrences > 1``.

    Raises:
        InputError: a phrase not in the caption, or one whose every occurrence overlaps an earlier
            phrase (phrases must be disjoint: their weights would count a word twice).
    """
    taken: List[PhraseSpan] = []
    for p in phrases:
        find_phrase(caption, p)
        hits = _occurrences(caption, p)
        free = [h for h in hits if all(h[1] <= t.start or h[0] >= t.end for t in taken)]
        if not free:
            other = next(t.phrase for t in taken if hits[0][1] > t.start and hits[0][0] < t.end)
            raise InputError(f"the phrases {other!r} and {p!r} overlap in the caption {caption!r}: give disjoint "
                             "phrases (a word may belong to one phrase only)")
        taken.append(PhraseSpan(p, free[0][0], free[0][1], len(hits)))
    return taken


# ---- sub-word tokens merged into words --------------------------------------------------------
def _vocab(tokenizer: Any) -> Iterable[str]:
    for t in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        if t is None:
            continue
        if isinstance(getattr(t, "encoder", None), dict):
            return t.encoder.keys()
        if hasattr(t, "get_vocab"):
            return t.get_vocab().keys()
    raise InputError(f"cannot read the vocabulary of a {type(tokenizer).__name__}: expected a Hugging Face "
                     "tokenizer (get_vocab) or open_clip's SimpleTokenizer (encoder)")


def word_scheme(tokenizer: Any) -> str:
    """The scheme (:data:`SCHEMES`) a tokenizer marks words with, read off its vocabulary: the
    marker (``</w>`` suffix, ``##`` prefix, ``▁`` prefix) most of its tokens carry.

    Raises:
        InputError: no vocabulary, or none of the three markers (e.g. GPT-2's ``Ġ``): the words
            of such a tokenizer cannot be told apart.
    """
    counts = {"bpe": 0, "wordpiece": 0, "sentencepiece": 0}
    for tok in _vocab(tokenizer):
        counts["bpe"] += tok.endswith(END)
        counts["wordpiece"] += tok.startswith(WORDPIECE) and len(tok) > 2
        counts["sentencepiece"] += tok.startswith(METASPACE)
    best = max(counts, key=counts.get)
    if counts[best] == 0:
        raise InputError(f"the {type(tokenizer).__name__}'s tokens carry no word marker ({END!r} suffix, "
                         f"{WORDPIECE!r} prefix or {METASPACE!r} prefix): its words cannot be merged; "
                         f"supported: {', '.join(SCHEMES)}")
    return best


def _infer(tokens: Sequence[str]) -> str:
    words = [t for t in tokens if t not in SPECIAL]
    if any(t.endswith(END) for t in words):
        return "bpe"
    if any(t.startswith(METASPACE) for t in words):
        return "sentencepiece"
    if any(t.startswith(WORDPIECE) and len(t) > 2 for t in words):
        return "wordpiece"
    if len(words) <= 1:
        return "bpe"
    raise InputError(f"cannot tell the tokenizer's scheme from the tokens {list(words)[:8]}: none carries "
                     f"{END!r}, {METASPACE!r} or {WORDPIECE!r}; pass scheme= (one of {', '.join(SCHEMES)}, "
                     "e.g. word_scheme(tokenizer))")


def _starts_word(tok: str, scheme: str, prev_closed: bool) -> bool:
    if scheme == "bpe":
        return prev_closed
    if scheme == "wordpiece":
        return not tok.startswith(WORDPIECE)
    return tok.startswith(METASPACE)


def _raw_runs(tokens: Sequence[str], scheme: str) -> List[Tuple[int, int]]:
    """Token ranges of the words (punctuation included), special tokens excluded."""
    runs: List[List[int]] = []
    closed = True
    for i, tok in enumerate(tokens):
        if tok in SPECIAL:
            closed = True
            continue
        if not runs or _starts_word(tok, scheme, closed) or runs[-1][1] != i:
            runs.append([i, i + 1])
        else:
            runs[-1][1] = i + 1
        closed = tok.endswith(END) if scheme == "bpe" else False
    return [(a, b) for a, b in runs]


def _text(tokens: Sequence[str], a: int, b: int) -> str:
    return "".join(tokens[a:b]).replace(END, "").replace(WORDPIECE, "").replace(METASPACE, "").lower()


_APOS = ("'", "\u2019")


def _joined(runs: List[Tuple[int, int]], tokens: Sequence[str]) -> List[Tuple[int, int]]:
    """Clitics attached to the word before them (BPE: ``"dog</w>", "'s</w>"``; BERT: ``"dog",
    "'", "s"``), adjacent digit words merged (BPE: ``"2</w>", "0</w>"``)."""
    out: List[Tuple[int, int]] = []
    for a, b in runs:
        t = _text(tokens, a, b)
        prev = _text(tokens, *out[-1]) if out else ""
        if out and out[-1][1] == a and t[:1] in _APOS and t[1:] in CLITICS and _ALNUM.search(prev):
            out[-1] = (out[-1][0], b)
        elif (len(out) > 1 and out[-1][1] == a and prev in _APOS and t in CLITICS and out[-2][1] == out[-1][0]
              and _ALNUM.search(_text(tokens, *out[-2]))):
            out.pop()
            out[-1] = (out[-1][0], b)
        elif out and out[-1][1] == a and t.isdigit() and prev.isdigit():
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def merge_words(tokens: Sequence[str], scheme: Optional[str] = None) -> List[WordSpan]:
    """The words of ``L`` sub-word tokens, by ``scheme`` (:data:`SCHEMES`; ``None``: read from the
    tokens' markers, which needs one of them to carry one: give :func:`word_scheme`'s answer for
    WordPiece, whose whole-word tokens carry none). Special tokens are skipped, punctuation
    words dropped, clitics attached, digit runs merged (see the module).

    Example (``"bpe"``): ``["a</w>", "pink", "ish</w>", "dog</w>", "'s</w>", ".</w>"]`` -> ``a``
    (0:1), ``pinkish`` (1:3), ``dog's`` (3:5).

    Raises:
        InputError: an unknown scheme, or ``None`` and tokens whose scheme cannot be told.
    """
    scheme = _infer(tokens) if scheme is None else scheme
    if scheme not in SCHEMES:
        raise InputError(f"unknown word scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    spans: List[WordSpan] = []
    for a, b in _joined(_raw_runs(tokens, scheme), tokens):
        while b - a > 1 and not _ALNUM.search(_text(tokens, b - 1, b)):  # SentencePiece: "dog", "."
            b -= 1
        while b - a > 1 and not _ALNUM.search(_text(tokens, a, a + 1)):
            a += 1
        text = _text(tokens, a, b).strip("'\u2019-.,;:!?\"()")
        if _ALNUM.search(text):
            spans.append(WordSpan(text, len(spans), a, b))
    return spans


def word_values(values: Tensor, spans: Sequence[WordSpan]) -> Tensor:
    """Token values ``(L,)`` summed over each word's tokens: ``(W,)``."""
    if not spans:
        return values.new_zeros(0)
    return torch.stack([values[s.start:s.end].sum() for s in spans])


def _folded(text: str) -> Tuple[str, List[int]]:
    """``text``'s letters and digits, lower-cased without accents, and each one's character index."""
    chars, where = [], []
    for i, c in enumerate(text):
        for d in unicodedata.normalize("NFKD", c.lower()):
            if _ALNUM.match(d) and not unicodedata.combining(d):
                chars.append(d)
                where.append(i)
    return "".join(chars), where


def align_words(text: str, spans: Sequence[WordSpan]) -> List[Tuple[int, int]]:
    """Each merged word's characters ``(start, end)`` in ``text`` (the words in order, letters and
    digits compared lower-case without accents; a character the tokenizer dropped is skipped).

    Raises:
        InputError: a word that is not in ``text`` after the one before it (tokens of another text).
    """
    folded, where = _folded(text)
    out, at = [], 0
    for s in spans:
        key, _ = _folded(s.text)
        i = folded.find(key, at) if key else -1
        if i < 0:
            raise InputError(f"the token word {s.text!r} is not in {text!r} after character {at}: "
                             "tokens of another text, or of another model's tokenizer")
        out.append((where[i], where[i + len(key) - 1] + 1))
        at = i + len(key)
    return out


def words_in(text: str, spans: Sequence[WordSpan], start: int, end: int) -> List[int]:
    """Indices of the merged words inside characters ``start:end`` of ``text``.

    Raises:
        InputError: a word straddles the span's edge, or none is inside (the span lies past the
            tokenizer's truncation).
    """
    inside = []
    for i, (a, b) in enumerate(align_words(text, spans)):
        if a < end and b > start:
            if a < start or b > end:
                raise InputError(f"the token word {spans[i].text!r} straddles the phrase {text[start:end]!r}")
            inside.append(i)
    if not inside:
        raise InputError(f"the phrase {text[start:end]!r} has no token in the model's tokens of {text!r} "
                         "(past the tokenizer's truncation?)")
    return inside


# ---- a model's tokens ---------------------------------------------------------------------------
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


def _end_id(tok: Any) -> Optional[int]:
    for name in ("eos_token_id", "eot_token_id", "sep_token_id"):
        end = getattr(tok, name, None)
        if end is not None:
            return end
    enc: Dict[str, int] = getattr(tok, "encoder", None) if isinstance(getattr(tok, "encoder", None), dict) else {}
    return enc.get("<|endoftext|>") or enc.get("<end_of_text>")


def _eos(tokenizer: Any, ids: Tensor) -> int:
    """The position of the end token in ``ids (L,)``: the tokenizer's end id (EOS, EOT, BERT's
    SEP; ``L`` if it is not there), else (no end id known) the largest id."""
    end = _end_id(getattr(tokenizer, "tokenizer", tokenizer))
    if end is None:
        return int(ids.argmax())
    hits = (ids == end).nonzero()
    return int(hits[0, 0]) if len(hits) else len(ids)


def _first(tokenizer: Any, ids: Tensor) -> int:
    """1 when ``ids`` start with a start token (CLIP's start of text, BERT's CLS), else 0 (SigLIP)."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    starts = {getattr(tok, n, None) for n in ("bos_token_id", "cls_token_id", "sot_token_id")} - {None}
    enc = getattr(tok, "encoder", None)
    if isinstance(enc, dict):
        starts |= {enc[t] for t in SPECIAL if t in enc and "start" in t}
    return int(len(ids) > 0 and int(ids[0]) in starts)


def bpe_tokens(clip: "LoadedCLIP", text: str) -> Tuple[List[str], int]:
    """The sub-word tokens of ``text`` between its start token (if the tokenizer has one) and its
    end token, markers kept, as the model's tokenizer cuts it (its truncation included), and the
    end token's position ``e``: the tokens are positions ``1:e`` of the ids (``0:e`` without a
    start token, as SigLIP's), the positions of a ``word_map``. Merge them with
    :func:`merge_words` and the tokenizer's :func:`word_scheme`."""
    ids, _ = clip.tokens([text])
    ids = ids[0]
    e = _eos(clip.tokenizer, ids)
    inner = ids[_first(clip.tokenizer, ids):e].tolist()
    toks = _hf_tokens(clip.tokenizer, inner) if clip.family == "hf" else _id_to_token(clip.tokenizer, inner)
    return toks, e
