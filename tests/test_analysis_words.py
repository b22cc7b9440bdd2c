"""analysis.words and the lemmatiser: sub-word tokens of the four tokenizers the package loads
(HF CLIP's BPE, open_clip's SimpleTokenizer layout, SigLIP's SentencePiece, BLIP's BERT WordPiece)
merged into the same words, each from a tiny tokenizer built in code (no hub); an unknown scheme is
an error; clitics attach, digits stay one word; the words sit on the caption's characters; simplemma's
lemmas."""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

from captum_gradeclip.analysis.concreteness import lemma_of
from captum_gradeclip.analysis.words import (
    align_words,
    bpe_tokens,
    find_phrase,
    merge_words,
    word_scheme,
    words_in,
)
from captum_gradeclip.errors import InputError
from captum_gradeclip.models import HFCLIP

CAPTION = "A pinkish dog's sofa, 2017."
WORDS = ["a", "pinkish", "dog's", "sofa", "2017"]


def _clip(tokenizer):
    return HFCLIP(model=None, preprocess=None, tokenizer=tokenizer, image_layers=[], gradcam_layer=None,
                  gradcam_name="", patch_size=8)


def _clip_bpe():
    """HF CLIPTokenizer whose merges cut "pinkish" into pink + ish</w> and "2017" into four digits."""
    from transformers import CLIPTokenizer

    from captum_gradeclip.shapes.model import _byte_chars

    chars = _byte_chars()
    merges = [("p", "i"), ("pi", "n"), ("pin", "k"), ("i", "s"), ("is", "h</w>"), ("d", "o"), ("do", "g</w>"),
              ("'", "s</w>"), ("s", "o"), ("so", "f"), ("sof", "a</w>")]
    vocab = chars + [c + "</w>" for c in chars] + ["pi", "pin", "pink", "is", "ish</w>", "do", "dog</w>", "'s</w>",
                                                   "so", "sof", "sofa</w>", "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=32)


def _bert():
    """BLIP's text tower tokenizes with BERT's WordPiece (## marks a word's continuation)."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "pink", "##ish", "'", "s", "sofa", ",", "2",
             "##0", "##1", "##7", ".", "##s"]
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)})


def _sentencepiece():
    """SigLIP's SentencePiece (a Unigram model, ▁ marks a word's first piece), no start token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581a", -1.0), ("\u2581dog", -1.0),
              ("\u2581pink", -1.0), ("ish", -2.0), ("\u2581", -3.0), ("s", -3.0), ("'", -3.0), (".", -3.0),
              (",", -3.0), ("\u2581sofa", -1.0), ("0", -3.0), ("1", -3.0), ("7", -3.0), ("\u25812", -3.0)]
    t = Tokenizer(models.Unigram(pieces, unk_id=2))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.decoder = decoders.Metaspace()
    t.normalizer = __import__("tokenizers").normalizers.Lowercase()
    t.post_processor = __import__("tokenizers").processors.TemplateProcessing(single="$A </s>",
                                                                              special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("make, scheme", [(_clip_bpe, "bpe"), (_bert, "wordpiece"), (_sentencepiece, "sentencepiece")])
def test_every_scheme_gives_the_captions_words(make, scheme):
    tok = make()
    assert word_scheme(tok) == scheme
    tokens, e = bpe_tokens(_clip(tok), CAPTION)
    spans = merge_words(tokens, word_scheme(tok))
    assert [s.text for s in spans] == WORDS, tokens
    assert [s.position for s in spans] == list(range(5))
    # each word on the caption's characters, so a phrase's span selects its words' tokens
    assert [CAPTION[a:b] for a, b in align_words(CAPTION, spans)] == ["A", "pinkish", "dog's", "sofa", "2017"]
    assert words_in(CAPTION, spans, *find_phrase(CAPTION, "dog's sofa")) == [2, 3]
    # the tokens are the word map's positions: the end token's position minus the start token's
    assert len(tokens) == e - (0 if scheme == "sentencepiece" else 1)


def test_open_clip_layout_and_unknown_schemes():
    class SimpleTokenizerLike:  # open_clip's SimpleTokenizer: .encoder / .decoder dicts of BPE tokens
        encoder = {"a</w>": 0, "dog</w>": 1, "pink": 2, "ish</w>": 3, "<start_of_text>": 4, "<end_of_text>": 5}

    assert word_scheme(SimpleTokenizerLike()) == "bpe"

    class GPT2Like:  # byte-level BPE with Ġ: no marker this module knows
        def get_vocab(self):
            return {"\u0120dog": 0, "dog": 1, "\u0120a": 2}

    with pytest.raises(InputError, match="carry no word marker"):
        word_scheme(GPT2Like())
    with pytest.raises(InputError, match="cannot tell the tokenizer's scheme"):
        merge_words(["a", "dog", "on", "a", "sofa"])  # WordPiece's whole words carry no marker: never one word
    with pytest.raises(InputError, match="unknown word scheme"):
        merge_words(["a</w>"], "unigram")


def test_clitics_attach_and_digits_stay_one_word():
    bpe = merge_words(["a</w>", "dog</w>", "'s</w>", "bed</w>", "2</w>", "0</w>", ".</w>", "1</w>", "don</w>",
                       "'t</w>"])
    assert [(s.text, s.start, s.end) for s in bpe] == [("a", 0, 1), ("dog's", 1, 3), ("bed", 3, 4), ("20", 4, 6),
                                                       ("1", 7, 8), ("don't", 8, 10)]
    wp = merge_words(["[CLS]", "it", "'", "s", "a", "dog", "'", "[SEP]"], "wordpiece")
    assert [s.text for s in wp] == ["it's", "a", "dog"]  # a lone quote stays punctuation
    sp = merge_words(["\u2581a", "\u2581dog", "."], "sentencepiece")
    assert [(s.text, s.end) for s in sp] == [("a", 1), ("dog", 2)]  # the glued "." is not the dog's


def test_tokens_of_another_text_do_not_align():
    spans = merge_words(["a</w>", "cat</w>"])
    with pytest.raises(InputError, match="not in 'a dog'"):
        align_words("a dog", spans)


@pytest.mark.skipif(find_spec("simplemma") is None, reason="needs the analysis extra (simplemma)")
def test_lemmas():
    ratings = {w: 3.0 for w in ("ride", "have", "sit", "man", "woman", "people", "child", "dog", "circle")}
    got = {w: lemma_of(w, ratings) for w in ("riding", "has", "sitting", "men", "women", "people", "children",
                                             "dog's", "circles")}
    assert got == {"riding": "ride", "has": "have", "sitting": "sit", "men": "man", "women": "woman",
                   "people": "people", "children": "child", "dog's": "dog", "circles": "circle"}
    assert lemma_of("zzkq", ratings) == "zzkq"
    assert lemma_of("glasses", {"glasses": 4.0}) == "glasses"  # the lemma unrated, the word rated: the word


def test_word_values_follow_the_spans():
    from captum_gradeclip.analysis.words import word_values

    spans = merge_words(["a</w>", "pink", "ish</w>", ".</w>"])
    assert word_values(torch.tensor([1.0, 2.0, 3.0, 9.0]), spans).tolist() == [1.0, 5.0]
