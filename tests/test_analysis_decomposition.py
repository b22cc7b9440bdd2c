"""Study 1 (decomposition): the numbers of one pair by hand on 2x2 maps and a 3-phrase-word
caption, phrase checks, and the command: a phrase not in its caption is a one-line error, and
torchrun on 2 processes gives the rows of 1 process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from captum_gradeclip.analysis.decomposition import (
    check_phrases,
    decompose,
    deleted,
    deletions,
    job_texts,
    phrase_weights,
    summarize,
    top_iou,
)
from captum_gradeclip.analysis.stats import pearson
from captum_gradeclip.analysis.words import find_phrase, locate_phrases
from captum_gradeclip.errors import InputError


def test_deleted_and_job_texts():
    cap = "a red circle and a blue ring"
    assert deleted(cap, "A red circle") == "and a blue ring"
    assert deleted(cap, "a blue ring") == "a red circle and"
    assert job_texts(cap, ["a red circle", "a blue ring"]) == [cap, "a red circle", "a blue ring", "and a blue ring",
                                                               "a red circle and"]
    with pytest.raises(InputError, match="'a green bar' is not in the caption"):
        check_phrases(cap, ["a red circle", "a green bar"])
    with pytest.raises(InputError, match="leaves nothing"):
        check_phrases("a red circle", ["a red circle"])
    with pytest.raises(InputError, match="has no phrases"):
        check_phrases(cap, [])


def test_phrases_are_whole_words():
    # the cases: the first *substring* match was removed ("amaran next to a cat")
    assert deleted("a catamaran next to a cat", "a cat") == "a catamaran next to"
    assert deleted("a bush behind a bus", "a bus") == "a bush behind"
    assert find_phrase("a bush behind a bus", "a bus") == (14, 19)
    with pytest.raises(InputError, match="'an' is not in the caption 'a cyan circle'"):
        check_phrases("a cyan circle", ["an"])
    assert deleted("A dog, a CAT. And a bird", "a cat") == "A dog. And a bird"  # punctuation between words
    with pytest.raises(InputError, match=r'must be a list of strings, got the string .*\["a red circle"\]'):
        check_phrases("a red circle and a blue ring", "a red circle")


def test_repeated_and_overlapping_phrases():
    cap = "a cat and a cat"
    # a repeated phrase: the k-th listing takes the k-th occurrence, flagged by occurrences > 1
    spans = locate_phrases(cap, ["a cat", "a cat"])
    assert [(s.start, s.end, s.occurrences) for s in spans] == [(0, 5, 2), (10, 15, 2)]
    assert deletions(cap, ["a cat", "a cat"]) == ["and a cat", "a cat and"]
    # an occurrence inside an earlier phrase is skipped: "dog" is the second one
    assert [(s.start, s.end) for s in locate_phrases("a small dog and a dog", ["a small dog", "dog"])] == [(0, 11), (18, 21)]
    with pytest.raises(InputError, match="'a red circle' and 'red' overlap"):
        check_phrases("a red circle and a blue ring", ["a red circle", "red"])


def test_phrase_weights_by_hand():
    cap = "a red circle and a blue ring."
    tokens = ["a</w>", "red</w>", "circ", "le</w>", "and</w>", "a</w>", "blue</w>", "ring</w>", ".</w>"]
    wmap = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 3.0, 2.0, 7.0])  # words: 1 1 2 0 1 3 2 (sum 10), "." dropped
    w = phrase_weights(cap, tokens, wmap, ["a red circle", "a blue ring"])
    assert w.tolist() == pytest.approx([0.4, 0.6])
    # the same phrase twice takes its two occurrences
    w2 = phrase_weights("a x a", ["a</w>", "x</w>", "a</w>"], torch.tensor([1.0, 2.0, 3.0]), ["a", "a"])
    assert w2.tolist() == pytest.approx([1 / 6, 3 / 6])
    # the weight is the deleted span's: "a cat" is the second one, not the start of "catamaran"
    cat = ["a</w>", "cat", "amaran</w>", "next</w>", "to</w>", "a</w>", "cat</w>"]
    w3 = phrase_weights("a catamaran next to a cat", cat, torch.tensor([1.0, 1, 1, 1, 1, 2, 3]), ["a cat"])
    assert w3.tolist() == pytest.approx([5 / 10])  # words a 1, catamaran 2, next 1, to 1, a 2, cat 3
    with pytest.raises(InputError, match="not in the caption"):
        phrase_weights(cap, tokens, wmap, ["green"])


def test_decompose_2x2_by_hand():
    M = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    Mp = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    masks = torch.tensor([[[True, False], [False, False]], [[False, True], [False, False]]])
    row = decompose(image="i", caption="c", phrases=["p", "q"], M=M, Mp=Mp, weights=torch.tensor([0.75, 0.25]),
                    score=0.5, deletion_scores=[0.3, 0.45], masks=masks)
    # sum w_p M_p = [[.75, 0], [0, .25]]: deviations from the means (.5 and .25) [.5, -.5, -.5, .5] and
    # [.5, -.25, -.25, 0]: products .5, squares 1 and .375 -> r = .5 / sqrt(.375)
    assert row.r_weighted == pytest.approx(0.5 / math.sqrt(0.375))
    assert row.r_mean == pytest.approx(1.0)  # the mean of the M_p is M / 2
    assert row.iou_weighted == 1.0 and row.iou_mean == 1.0  # top 20% of 4 cells = 1 cell: (0, 0) in all
    assert row.drops == pytest.approx((0.2, 0.05)) and row.spearman_drop_weight == pytest.approx(1.0)
    assert row.pointing == (1.0, 0.0) and row.pointing_rate == 0.5  # q's map peaks at (1, 1), its object is (0, 1)
    assert row.energy_in_objects == pytest.approx(0.5)  # M's mass: half at (0, 0), half at (1, 1) (outside)
    assert row.object_area == pytest.approx(0.5)  # the objects cover cells (0, 0) and (0, 1) of 4
    assert pearson(M.reshape(-1), (0.75 * Mp[0] + 0.25 * Mp[1]).reshape(-1)) == pytest.approx(row.r_weighted)
    one = decompose(image="i", caption="c", phrases=["p"], M=M, Mp=Mp[:1], weights=torch.tensor([1.0]),
                    score=0.5, deletion_scores=[0.3])
    assert math.isnan(one.spearman_drop_weight) and one.pointing == () and math.isnan(one.energy_in_objects)
    s = summarize([row, one], n_boot=50)
    assert s["spearman_drop_weight"]["n"] == 1 and s["spearman_drop_weight"]["undefined"] == 1
    assert s["r_weighted"]["mean"].mean == pytest.approx((row.r_weighted + one.r_weighted) / 2)
    assert s["deletions_lowering_score"] == 1.0  # drops 0.2, 0.05 and 0.2: all positive
    assert s["by_n_phrases"]["2"]["pairs"] == 1 and s["by_n_phrases"]["1"]["spearman_drop_weight"] is None


def test_top_iou_by_hand():
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 2.0, 1.0, 4.0]])
    assert top_iou(a, b, fraction=0.4) == pytest.approx(1 / 3)  # {0, 1} vs {4, 1}: 1 shared of 3


def test_phrase_not_in_caption_is_one_line_error(tmp_path, capsys):
    from captum_gradeclip.cli import main

    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"image": "x.png", "texts": ["a red circle and a blue ring"],
                             "phrases": ["a red circle", "a green bar"]}) + "\n")
    assert main(["analyze", "decomposition", "--pairs", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"captum-gradeclip: error: {p}:1: the phrase 'a green bar' is not in the caption "
                       "'a red circle and a blue ring' (as whole words)")


def _run(cmd, env):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_two_processes_give_the_rows_of_one(tmp_path):
    import pyarrow.parquet as pq

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["analyze", "decomposition", "--scenes", "2", "--batch-size", "1", "--shard-size", "1", "--n-boot", "20"]
    from captum_gradeclip.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0  # one process: this one
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "captum_gradeclip", *args, "--out", str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stderr[-2000:]
    logs = sorted(p.name for p in (tmp_path / "two" / "maps" / "logs").iterdir())
    assert logs == ["rank-0.log", "rank-1.log"]  # both ranks explained shards
    a = pq.read_table(tmp_path / "one" / "rows.parquet").to_pylist()
    b = pq.read_table(tmp_path / "two" / "rows.parquet").to_pylist()
    assert [r["image"] for r in a] == [r["image"] for r in b] and len(a) == 2
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if isinstance(v, float) and not math.isnan(v):
                # the same batches on every world size; maps stored as float16 and compared after
                # float64 statistics: a difference can only come from kernel rounding (~1e-7)
                assert rb[k] == pytest.approx(v, abs=1e-5), k
            elif isinstance(v, list) and v and isinstance(v[0], float):
                assert rb[k] == pytest.approx(v, abs=1e-5), k
            elif not isinstance(v, float):
                assert rb[k] == v, k
    assert (tmp_path / "two" / "decomposition.png").is_file()
