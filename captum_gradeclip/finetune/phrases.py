"""Phrases without a hand-made list: a rule-based noun-phrase miner over a small lexicon.

SFF-CLIP mines the phrases of a caption as its noun phrases, adjective(s) + noun, at most 5 per
caption. Here a caption's words are looked up in the package's lexicon (:mod:`.lexicon`, or a
caller's :class:`Lexicon`): a phrase is a run of adjectives followed by a run of nouns (two-word
nouns such as "traffic light" first, plurals included), the words separated by whitespace only.
A word that is both (``"orange"``, ``"square"``) is an adjective before a noun and the noun
otherwise. Words are the caption's whole words as :func:`captum_gradeclip.analysis.words.caption_words`
cuts them (the one definition the analyses locate phrases with), and each phrase is the caption's
own text between its first and last word, so :func:`~captum_gradeclip.analysis.words.find_phrase`
finds it as whole words (checked); repeats are dropped (case-insensitive), the first five kept.

No NLP model and no download: this runs offline and in CI. What it cannot see (words outside the
lexicon) it leaves out; captions that yield no phrase are reported (:class:`MinedPhrases`'s
``empty``), never dropped silently.

Offline, for a pairs file whose maps ``explain-dataset`` mines first (``"texts"``: the phrases;
``--texts caption`` keeps ``"texts": [caption]`` instead, the layout ``analyze decomposition``
reads, which also reads the ``"caption"`` field)::

    python -m captum_gradeclip.finetune.phrases pairs.jsonl --out phrased.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import FrozenSet, List, Optional, Sequence, Tuple

from ..analysis.words import caption_words, find_phrase
from . import lexicon as _lexicon

#: SFF-CLIP's limit of phrases per caption.
MAX_PHRASES = 5


def plural(noun: str) -> str:
    """The plural of a singular English ``noun`` (the last word of a compound): irregular ones
    from :data:`~.lexicon.IRREGULAR`, else ``-es`` after s, x, z, ch, sh, ``-ies`` after a
    consonant + y, ``-s`` otherwise."""
    head, _, last = noun.rpartition(" ")
    if last in _lexicon.IRREGULAR:
        p = _lexicon.IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        p = last + "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return f"{head} {p}" if head else p


def _with_plurals(words: FrozenSet[str]) -> FrozenSet[str]:
    return frozenset(words) | {plural(w) for w in words}


@dataclass(frozen=True)
class Lexicon:
    """Lower-case word lists: ``adjectives``, singular ``nouns`` and two-word ``compounds`` (plurals
    are added). Default: the package's (:mod:`.lexicon`)."""

    adjectives: FrozenSet[str] = _lexicon.ADJECTIVES
    nouns: FrozenSet[str] = _lexicon.NOUNS
    compounds: FrozenSet[str] = _lexicon.COMPOUNDS
    _noun_forms: FrozenSet[str] = field(init=False, repr=False, compare=False)
    _compound_forms: FrozenSet[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_noun_forms", _with_plurals(self.nouns))
        object.__setattr__(self, "_compound_forms", _with_plurals(self.compounds))

    def is_noun(self, word: str) -> bool:
        """Whether ``word`` (lower case) is a noun of the lexicon or its plural."""
        return word in self._noun_forms

    def is_compound(self, a: str, b: str) -> bool:
        """Whether the two words are a two-word noun (or its plural)."""
        return f"{a} {b}" in self._compound_forms


@dataclass(frozen=True)
class MinedPhrases:
    """Phrases of each caption, and which captions (indices) yielded none.

    Attributes:
        phrases: one list per caption (``[]`` where none was found). empty: their indices.
    """

    phrases: List[List[str]]
    empty: List[int]


def _tokens(caption: str) -> List[Tuple[str, int, int]]:
    return caption_words(caption)


def _joined(caption: str, toks: Sequence[Tuple[str, int, int]], a: int, b: int) -> bool:
    """Whether tokens ``a`` and ``b = a + 1`` are separated by whitespace only."""
    return b < len(toks) and not caption[toks[a][2]:toks[b][1]].strip()


def _noun_run(caption: str, toks: Sequence[Tuple[str, int, int]], j: int, lex: Lexicon) -> int:
    """The end (exclusive) of the run of nouns from token ``j`` (``j``: none)."""
    k = j
    while k < len(toks) and (k == j or _joined(caption, toks, k - 1, k)):
        if _joined(caption, toks, k, k + 1) and lex.is_compound(toks[k][0], toks[k + 1][0]):
            k += 2
        elif lex.is_noun(toks[k][0]):
            k += 1
        else:
            break
    return k


def _phrase_at(caption: str, toks: Sequence[Tuple[str, int, int]], i: int, lex: Lexicon) -> Tuple[int, int]:
    """``(first, end)`` tokens of the phrase starting at token ``i`` (``end == first``: none)."""
    j = i
    while j < len(toks) and toks[j][0] in lex.adjectives and (j == i or _joined(caption, toks, j - 1, j)):
        j += 1
    k = _noun_run(caption, toks, j, lex) if j == i or _joined(caption, toks, j - 1, j) else j
    if k == j and j > i and lex.is_noun(toks[j - 1][0]):  # "an orange", "a red square": the last is the noun
        k = j
    elif k == j:
        return i, i
    return i, k


def mine_phrases(caption: str, *, max_phrases: int = MAX_PHRASES, lexicon: Optional[Lexicon] = None) -> List[str]:
    """The noun phrases (adjective(s) + noun) of ``caption``, in order, at most ``max_phrases``,
    each the caption's own text (a span of it).

    Raises:
        TypeError: ``caption`` is not a string.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    lex = lexicon or Lexicon()
    toks = _tokens(caption)
    out: List[str] = []
    seen = set()
    i = 0
    while i < len(toks) and len(out) < max_phrases:
        first, end = _phrase_at(caption, toks, i, lex)
        if end == first:
            i += 1
            continue
        phrase = caption[toks[first][1]:toks[end - 1][2]]
        if phrase.lower() not in seen and find_phrase(caption, phrase):
            seen.add(phrase.lower())
            out.append(phrase)
        i = end
    return out


def mine_captions(captions: Sequence[str], *, max_phrases: int = MAX_PHRASES,
                  lexicon: Optional[Lexicon] = None) -> MinedPhrases:
    """:func:`mine_phrases` of every caption, with the indices of those that yield none."""
    phrases = [mine_phrases(c, max_phrases=max_phrases, lexicon=lexicon) for c in captions]
    return MinedPhrases(phrases, [i for i, p in enumerate(phrases) if not p])


def _caption_of(row: dict, n: int, path: str) -> str:
    cap = row.get("caption")
    if cap is None and isinstance(row.get("texts"), list) and len(row["texts"]) == 1:
        cap = row["texts"][0]
    if not isinstance(cap, str):
        raise SystemExit(f"{path}:{n}: a line needs \"caption\": a string (or \"texts\" holding one caption)")
    return cap


def main(argv: Optional[List[str]] = None) -> None:
    """Add mined ``"phrases"`` (and ``"texts"``: the phrases, for ``explain-dataset --pairs``, or
    with ``--texts caption`` the caption) to each line of a pairs file that has no ``"phrases"``;
    report the captions that yield none."""
    ap = argparse.ArgumentParser(description="mine adjective(s) + noun phrases of a pairs file's captions")
    ap.add_argument("pairs", help='JSON lines {"image": ..., "caption": ...} (or "texts": [caption])')
    ap.add_argument("--out", required=True, help="the pairs with \"phrases\" and \"texts\"")
    ap.add_argument("--max-phrases", type=int, default=MAX_PHRASES)
    ap.add_argument("--texts", choices=("phrases", "caption"), default="phrases",
                    help='what "texts" holds when absent: the phrases (finetune\'s mined maps, default) or '
                         '[caption] (analyze decomposition)')
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in open(args.pairs, encoding="utf-8") if line.strip()]
    empty = []
    with open(args.out, "w", encoding="utf-8") as f:
        for n, row in enumerate(rows, 1):
            cap = _caption_of(row, n, args.pairs)
            if "phrases" not in row:
                row["phrases"] = mine_phrases(cap, max_phrases=args.max_phrases)
            row.setdefault("caption", cap)
            row.setdefault("texts", row["phrases"] if args.texts == "phrases" else [cap])
            if not row["phrases"]:
                empty.append(n)
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} pairs, {len(empty)} without a phrase (lines {empty[:20]}{' ...' if len(empty) > 20 else ''}; "
          "kept, read them with --phrases auto)", file=sys.stderr)


if __name__ == "__main__":
    main()
