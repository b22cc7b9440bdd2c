"""The phrase miner (finetune/phrases.py) on captions of varied shapes, and --phrases auto in pairs
files: captions that yield no phrase are kept and reported."""

from __future__ import annotations

import json

import pytest

from captum_gradeclip.finetune import DataError, read_pairs
from captum_gradeclip.finetune.data import unphrased
from captum_gradeclip.finetune.phrases import Lexicon, mine_captions, mine_phrases, plural

CASES = {
    # ShapesCLIP captions: the objects without their article
    "a red circle and a blue bar": ["red circle", "blue bar"],
    "an orange triangle": ["orange triangle"],
    # COCO-like captions: several adjectives, plurals, two-word nouns, capitals, punctuation
    "A man riding a red motorcycle down a busy street.": ["man", "red motorcycle", "busy street"],
    "Two BLACK dogs playing with a frisbee on green grass": ["BLACK dogs", "frisbee", "green grass"],
    "A small white toilet sitting next to a fire hydrant": ["small white toilet", "fire hydrant"],
    "people standing at a bus stop": ["people", "bus stop"],
    # a word that is adjective and noun: the noun when nothing follows
    "An orange on a plate": ["orange", "plate"],
    "a glass table with a glass": ["glass table", "glass"],
    # phrases do not run across punctuation; repeats count once
    "red, white circle": ["white circle"],
    "a dog and a dog and a small dog": ["dog", "small dog"],
    "  a  big   red   bus  ": ["big   red   bus"],
}


@pytest.mark.parametrize("caption", list(CASES))
def test_mined_phrases_are_adjectives_and_a_noun_and_spans_of_the_caption(caption):
    got = mine_phrases(caption)
    assert got == CASES[caption]
    assert all(p in caption for p in got)


def test_at_most_five_and_no_phrase_is_reported():
    long = ("a large wooden dining table in a living room with many chairs, two lamps, a sofa, "
            "a clock and a small dog")
    got = mine_phrases(long)
    assert got == ["large wooden dining table", "living room", "chairs", "lamps", "sofa"]
    assert len(mine_phrases(long, max_phrases=2)) == 2
    mined = mine_captions(["the quick brown fox jumps", "a red circle", "", "running quickly"])
    assert mined.empty == [0, 2, 3] and mined.phrases[1] == ["red circle"]
    custom = Lexicon(adjectives=frozenset({"quick", "brown"}), nouns=frozenset({"fox"}), compounds=frozenset())
    assert mine_phrases("the quick brown fox jumps", lexicon=custom) == ["quick brown fox"]
    with pytest.raises(TypeError, match="string"):
        mine_phrases(None)


def test_plurals():
    assert [plural(w) for w in ("dog", "bus", "box", "bench", "sky", "toy", "man", "knife", "wine glass")] == [
        "dogs", "buses", "boxes", "benches", "skies", "toys", "men", "knives", "wine glasses"]


def test_pairs_file_with_phrases_auto_keeps_and_reports_captions_without_phrases(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / f"{i}.png")
    rows = [{"image": "0.png", "caption": "a red circle and a blue bar"},
            {"image": "1.png", "caption": "the quick brown fox"},
            {"image": "2.png", "caption": "a red circle", "phrases": ["circle"]}]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="has no phrases"):
        read_pairs(f)  # "given": every caption needs phrases
    samples = read_pairs(f, phrases="auto")
    assert [s.phrases for s in samples] == [["red circle", "blue bar"], [], ["circle"]]  # given ones win
    assert unphrased(samples) == ["1.png"]
    with pytest.raises(ValueError, match="phrases must be one of"):
        read_pairs(f, phrases="mined")


def test_offline_miner_writes_phrases_and_texts_and_reports_empties(tmp_path, capsys):
    from captum_gradeclip.finetune.phrases import main

    src, out = tmp_path / "p.jsonl", tmp_path / "q.jsonl"
    src.write_text(json.dumps({"image": "0.png", "caption": "a red circle and a blue bar"}) + "\n"
                   + json.dumps({"image": "1.png", "caption": "nothing known here"}) + "\n"
                   + json.dumps({"image": "2.png", "caption": "a red circle", "phrases": ["circle"]}) + "\n")
    main([str(src), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["phrases"] for r in rows] == [["red circle", "blue bar"], [], ["circle"]]
    assert [r["texts"] for r in rows] == [r["phrases"] for r in rows]
    assert "1 without a phrase (lines [2]" in capsys.readouterr().err
