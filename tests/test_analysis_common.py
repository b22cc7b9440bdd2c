"""captum_gradeclip.analysis: the statistics (against hand computations), the pairs file, the row
and summary writers, and sub-word tokens merged into words for the three tokenizers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from captum_gradeclip.errors import InputError
from captum_gradeclip.analysis import (
    Interval,
    bootstrap_ci,
    partial_correlation,
    pearson,
    read_pairs,
    spearman,
    write_rows,
    write_summary,
)
from captum_gradeclip.analysis.stats import bootstrap_stat, ranks
from captum_gradeclip.analysis.words import bpe_tokens, merge_words, word_values


def test_pearson_by_hand():
    # x = [1, 2, 3], y = [1, 2, 4]: deviations [-1, 0, 1] and [-4/3, -1/3, 5/3]; sum of products 3,
    # sums of squares 2 and 42/9: r = 3 / sqrt(2 * 42 / 9)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9), abs=1e-12)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # constant: undefined, not 0


def test_spearman_average_ranks_for_ties():
    assert ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 3, 2, 4]: deviations [-1.5, 0, 0, 1.5], [-1.5, .5, -.5, 1.5];
    # products 4.5, squares 4.5 and 5: rho = 4.5 / sqrt(22.5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)
    assert spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)  # monotone, not linear


def test_partial_correlation_by_hand():
    # z splits the points into two groups; within them x and y move oppositely: residuals of x on
    # z are [-.5, .5, -.5, .5], of y [.5, -.5, .5, -.5]: partial r = -1 (plain r is +0.6)
    x, y, z = [1, 2, 3, 4], [2, 1, 4, 3], [1, 1, 2, 2]
    assert pearson(x, y) == pytest.approx(0.6)
    assert partial_correlation(x, y, z) == pytest.approx(-1.0)
    rxy, rxz, ryz = pearson(x, y), pearson(x, z), pearson(y, z)
    assert partial_correlation(x, y, z) == pytest.approx((rxy - rxz * ryz) / math.sqrt((1 - rxz ** 2) * (1 - ryz ** 2)))
    assert partial_correlation(x, y, z, method="spearman") == pytest.approx(-1.0)


def test_bootstrap_ci_is_the_percentile_bootstrap():
    v = [1.0, 2.0, 3.0, 4.0]
    ci = bootstrap_ci(v, n_boot=200, seed=3)
    # the same resamples by hand: the same generator, the means, their 2.5% and 97.5% quantiles
    idx = torch.randint(0, 4, (200, 4), generator=torch.Generator().manual_seed(3))
    means = sorted(torch.tensor(v, dtype=torch.float64)[idx].mean(1).tolist())
    lo_pos, hi_pos = 0.025 * 199, 0.975 * 199  # linear interpolation between order statistics
    lo = means[int(lo_pos)] + (lo_pos % 1) * (means[int(lo_pos) + 1] - means[int(lo_pos)])
    hi = means[int(hi_pos)] + (hi_pos % 1) * (means[int(hi_pos) + 1] - means[int(hi_pos)])
    assert ci.mean == 2.5
    assert ci.low == pytest.approx(lo) and ci.high == pytest.approx(hi)
    assert 1.0 <= ci.low < 2.5 < ci.high <= 4.0
    assert bootstrap_ci([7.0]) == Interval(7.0, 7.0, 7.0)
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)  # seeded: the same every run


def test_bootstrap_stat_of_a_correlation():
    x, y = [1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 6]
    ci = bootstrap_stat(spearman, x, y, n_boot=300)
    assert ci.mean == pytest.approx(spearman(x, y))
    assert -1 <= ci.low <= ci.mean <= ci.high <= 1


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [[1.0, 2.0]]])
def test_statistics_refuse_empty_nan_and_not_1d(bad):
    with pytest.raises(ValueError):
        bootstrap_ci(bad)
    with pytest.raises(ValueError):
        spearman(bad, bad)
    with pytest.raises(ValueError, match="same length"):
        pearson([1, 2, 3], [1, 2])


def test_read_pairs(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text('{"image": "a.png", "texts": ["a red circle"], "phrases": ["a red circle"]}\n\n'
                 '{"image": "sub/b.png", "texts": ["x", "y"]}\n')
    lines = read_pairs(p)
    assert [ln.image for ln in lines] == ["a.png", "sub/b.png"]
    assert lines[0].path == tmp_path / "a.png" and lines[0].fields == {"phrases": ["a red circle"]}
    assert lines[1].texts == ("x", "y") and lines[1].line == 3 and lines[1].where() == f"{p}:3"
    p.write_text('{"image": "a.png", "texts": ["ok"]}\n{"image": "b.png", "text": "no list"}\n')
    with pytest.raises(InputError, match=r"pairs.jsonl:2: expected"):
        read_pairs(p)
    p.write_text('{"image": "a.png", "texts": [" "]}\n')
    with pytest.raises(InputError, match=r":1: \"texts\" must hold"):
        read_pairs(p)


def test_write_rows_and_summary(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Row:
        name: str
        values: tuple
        x: float

    path = write_rows([Row("a", (1.0, 2.0), 0.5), Row("b", (), float("nan"))], tmp_path)
    import pyarrow.parquet as pq

    got = pq.read_table(path).to_pylist()
    assert got[0] == {"name": "a", "values": [1.0, 2.0], "x": 0.5} and math.isnan(got[1]["x"])
    s = write_summary({"r": Interval(0.5, 0.1, 0.9), "nan": float("nan")}, tmp_path)
    assert json.loads(s.read_text()) == {"r": {"mean": 0.5, "low": 0.1, "high": 0.9}, "nan": None}


def test_merge_words_on_bpe_tokens():
    tokens = ["a</w>", "pink", "ish</w>", "dog</w>", ",</w>", "<|endoftext|>"]
    spans = merge_words(tokens)
    assert [(s.text, s.position, s.start, s.end) for s in spans] == [("a", 0, 0, 1), ("pinkish", 1, 1, 3), ("dog", 2, 3, 4)]
    assert word_values(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), spans).tolist() == [1.0, 5.0, 4.0]


def _tiny_bpe_clip():
    """A Hugging Face CLIPTokenizer built in code whose merges cut "pinkish" into pink + ish</w>."""
    from transformers import CLIPTokenizer

    from captum_gradeclip.models import HFCLIP
    from captum_gradeclip.shapes.model import _byte_chars

    chars = _byte_chars()
    merges = [("p", "i"), ("pi", "n"), ("pin", "k"), ("i", "s"), ("is", "h</w>"), ("d", "o"), ("do", "g</w>")]
    vocab_list = chars + [c + "</w>" for c in chars] + ["pi", "pin", "pink", "is", "ish</w>", "do", "dog</w>"]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab_list)}, merges=merges, model_max_length=16)
    return HFCLIP(model=None, preprocess=None, tokenizer=tok, image_layers=[], gradcam_layer=None,
                      gradcam_name="", patch_size=8)


def test_word_merging_hf_clip_bpe():
    tokens, eos = bpe_tokens(_tiny_bpe_clip(), "A pinkish dog.")
    assert tokens == ["a</w>", "pink", "ish</w>", "dog</w>", ".</w>"] and eos == 6
    assert [s.text for s in merge_words(tokens)] == ["a", "pinkish", "dog"]


def test_word_merging_shapes_clip():
    from captum_gradeclip.models import HFCLIP
    from captum_gradeclip.shapes.model import build_processor

    clip = HFCLIP(model=None, preprocess=None, tokenizer=build_processor().tokenizer,
                      image_layers=[], gradcam_layer=None, gradcam_name="", patch_size=8)
    tokens, eos = bpe_tokens(clip, "a red circle, and a bluish ring")
    words = merge_words(tokens)
    assert [w.text for w in words] == ["a", "red", "circle", "and", "a", "bluish", "ring"]
    assert tokens[2] == "circle</w>" and tokens[3] == ",</w>" and eos == len(tokens) + 1
    assert words[5].end - words[5].start > 1  # "bluish" is not a word of its vocabulary: several tokens, one word


def test_word_merging_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from captum_gradeclip.models import OpenCLIP

    tok = open_clip.get_tokenizer("ViT-B-32")
    clip = OpenCLIP(model=None, preprocess=None, tokenizer=tok, image_layers=[],
                      gradcam_layer=None, gradcam_name="", patch_size=32)
    tokens, _ = bpe_tokens(clip, "A photograph of a tabby cat, sleeping.")
    assert [w.text for w in merge_words(tokens)] == ["a", "photograph", "of", "a", "tabby", "cat", "sleeping"]
