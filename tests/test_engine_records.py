"""The engine's typed seams: the BatchExplainer Protocol (declared attributes, the base class's
defaults, every explainer of the package), the typed records (error rows, input counts, the run
summary) and the files the engine writes, whose layout the records must not change.

The expected layouts below were read off a run of the same two jobs with the engine as it was
before the records existed (dict rows and summaries); they are the on-disk format users parse.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyarrow")

from scale_helpers import make_folder  # noqa: E402

from captum_gradeclip.cli import main  # noqa: E402
from captum_gradeclip.scale import (  # noqa: E402
    BaseBatchExplainer,
    BatchExplainer,
    ErrorRow,
    InputCounts,
    RunSummary,
    as_batch_explainer,
    explain_dataset,
    read_maps,
)

FAST = ["--workers", "0", "--no-progress", "--batch-size", "2", "--shard-size", "3"]
IMAGE_MAPS = ["image: string", "text: string", "text_index: int32", "score: float", "map: list<element: halffloat>",
              "map_h: int32", "map_w: int32"]
WORD_MAPS = ["words: list<element: string>", "word_map: list<element: halffloat>"]
MANIFEST = ["config", "fingerprint", "versions", "world_size", "shards", "totals", "inputs", "warnings"]
MANIFEST_SHARD = ["file", "rows", "errors", "sha256", "inputs"]
SUMS = ["file", "sha256", "inputs"]
COUNTS = ["images", "images_with_rows", "images_only_in_errors", "texts", "rows", "text_errors"]
SUMMARY = ["images", "images_this_run", "skipped_shards", "wall_s", "images_per_s", "world_size", "pairs", "errors",
           "shards", "texts_too_long"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Two explain-dataset jobs: 4 scenes + 2 unreadable images x 3 prompts with word maps; a
    pairs file with a text longer than ShapesCLIP's context and an unreadable image."""
    root = tmp_path_factory.mktemp("records")
    images, prompts = make_folder(root, n=4, bad=True)
    pairs = root / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "scene1.png", "texts": ["a red circle", "red " * 40]}) + "\n"
                     + json.dumps({"image": "empty.png", "texts": ["a blue square"]}) + "\n")
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(root / "prompts"),
                 "--text-maps", *FAST]) == 0
    assert main(["explain-dataset", "--images", str(images), "--pairs", str(pairs), "--out", str(root / "pairs"),
                 *FAST]) == 0
    return root


def _layout(out: Path) -> dict:
    import pyarrow.parquet as pq

    m = json.loads((out / "manifest.json").read_text())
    sums = json.loads((out / "sums" / "shard-00000.json").read_text())
    return {"schema": [f"{f.name}: {f.type}" for f in pq.read_schema(out / "shard-00000.parquet")],
            "manifest": list(m), "shard": list(m["shards"][0]), "totals": m["totals"], "warnings": m["warnings"],
            "errors": [list(json.loads(ln)) for ln in (out / "errors.jsonl").read_text().splitlines()],
            "sums": list(sums), "sums_inputs": list(sums["inputs"]), "inputs": m["inputs"]}


def test_engine_files_keep_their_layout(jobs):
    a = _layout(jobs / "prompts")
    assert a["schema"] == IMAGE_MAPS + WORD_MAPS
    assert a["manifest"] == MANIFEST and a["shard"] == MANIFEST_SHARD and a["sums"] == SUMS
    assert a["sums_inputs"] == COUNTS and list(a["inputs"]) == COUNTS + ["checked"]
    assert a["totals"] == {"shards": 2, "rows": 4 * 3, "errors": 2} and a["warnings"] == {"texts_too_long": 0}
    assert a["errors"] == [["image", "error"]] * 2  # two unreadable images
    b = _layout(jobs / "pairs")
    assert b["schema"] == IMAGE_MAPS
    assert b["errors"] == [["image", "error"], ["image", "error", "text", "code"]]
    assert b["totals"] == {"shards": 1, "rows": 1, "errors": 2} and b["warnings"] == {"texts_too_long": 1}
    assert {k: b["inputs"][k] for k in COUNTS} == {"images": 2, "images_with_rows": 1, "images_only_in_errors": 1,
                                                    "texts": 2, "rows": 1, "text_errors": 1}
    too_long = json.loads((jobs / "pairs" / "errors.jsonl").read_text().splitlines()[1])
    assert too_long["code"] == "text_too_long" and too_long["text"] == "red " * 40


def test_error_rows_and_input_counts_are_the_lines_written(jobs):
    lines = (jobs / "pairs" / "errors.jsonl").read_text().splitlines()
    first, second = (json.loads(ln) for ln in lines)
    assert json.dumps(ErrorRow(first["image"], first["error"], input=7).to_dict()) == lines[0]  # input: memory only
    assert json.dumps(ErrorRow(**second).to_dict()) == lines[1]
    assert not ErrorRow("a", "b").per_text and ErrorRow("a", "b", "t").per_text
    sums = json.loads((jobs / "pairs" / "sums" / "shard-00000.json").read_text())["inputs"]
    assert InputCounts(**sums).to_dict() == sums and list(InputCounts(**sums).to_dict()) == list(sums)
    from captum_gradeclip.scale.store import INPUT_COUNTS

    assert list(InputCounts(1, 1, 0, 1, 1, 0).to_dict()) == list(INPUT_COUNTS)


def test_run_summary_reads_the_manifest(tmp_path):
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.scale import CLIPExplainer
    from captum_gradeclip.shapes import render_scene

    clip = load_shapes()
    data = [(f"s{s}", clip.pixels([render_scene(seed=s).image])[0], ["a red circle", "red " * 40]) for s in range(3)]
    summary = explain_dataset(data, CLIPExplainer(clip), tmp_path / "out", batch_size=2, shard_size=2, num_workers=0,
                              progress=False, device="cpu")
    assert isinstance(summary, RunSummary) and summary.is_main
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (summary.pairs, summary.errors, summary.shards) == (m["totals"]["rows"], m["totals"]["errors"], 2)
    assert summary.texts_too_long == m["warnings"]["texts_too_long"] == 3
    assert (summary.images, summary.images_this_run, summary.skipped_shards, summary.world_size) == (3, 3, 0, 1)
    assert list(summary.to_dict()) == SUMMARY
    again = explain_dataset(data, CLIPExplainer(clip), tmp_path / "out", batch_size=2, shard_size=2, num_workers=0,
                            progress=False, device="cpu")
    assert (again.images_this_run, again.skipped_shards, again.images_per_s) == (0, 2, 0.0)
    other_rank = RunSummary(3, 1, 0, 0.5, 2.0, 2, rank=1)
    assert not other_rank.is_main and list(other_rank.to_dict()) == SUMMARY[:6]


def test_every_explainer_of_the_package_declares_the_protocol():
    from captum_gradeclip import ImageGradECLIP
    from captum_gradeclip.benchmark.config import FaithfulnessConfig
    from captum_gradeclip.benchmark.folder import FaithfulnessExplainer
    from captum_gradeclip.benchmark.imagenet_explainer import ProtocolExplainer
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.scale import AttributeAllExplainer, CLIPExplainer
    from captum_gradeclip.segment.job import SegmentExplainer, SegmentOptions

    clip = load_shapes()
    sim = clip.image_similarity(*clip.tokens(["a red circle"]))
    ours = [CLIPExplainer(clip), CLIPExplainer(clip, text_maps=True),
            AttributeAllExplainer(ImageGradECLIP(sim, clip.image_layers[-1]), ["a red circle"]),
            FaithfulnessExplainer(sim, {}, FaithfulnessConfig()), ProtocolExplainer(sim, sim, {}, sim, "gt")]
    for e in ours:
        assert isinstance(e, BatchExplainer) and as_batch_explainer(e) is e
    assert [e.text_maps for e in ours[:2]] == [False, True]
    assert [e.splits_texts for e in ours] == [True, True, True, False, False]
    assert ours[0].refused_texts(["a red circle", "red " * 40]).keys() == {"red " * 40}
    assert ours[2].config() == {"explainer": "ImageGradECLIP", "texts": ["a red circle"]}
    seg = SegmentExplainer(None, None, SegmentOptions(("a",), (), 0.5, "joint", Path(".")))
    adapted = as_batch_explainer(seg)  # declares splits_texts and to_table: the rest are the defaults
    assert isinstance(adapted, BatchExplainer) and adapted.splits_texts is False
    assert adapted.to_table == seg.to_table and adapted.config() is None and adapted.refused_texts(["a"]) == {}


class _Refusing(BaseBatchExplainer):
    """Declares only what differs from the defaults: it refuses texts with a "z"."""

    def __call__(self, pixels, texts):
        return [[{"text": t, "score": float(px.mean()), "map": px[0, :2, :2]} for t in ts] for px, ts in zip(pixels, texts)]

    def refused_texts(self, texts):
        return {t: "no z" for t in texts if "z" in t}


def test_declared_attributes_drive_the_engine(tmp_path):
    data = [(f"k{i}", torch.full((3, 4, 4), float(i)), ["a", "zz"]) for i in range(3)]
    explain_dataset(data, _Refusing(), tmp_path / "one", batch_size=2, shard_size=2, num_workers=0, progress=False,
                    device="cpu")
    rows = list(read_maps(tmp_path / "one"))
    assert [(r["image"], r["text"], r["score"]) for r in rows] == [("k0", "a", 0.0), ("k1", "a", 1.0), ("k2", "a", 2.0)]
    errors = [json.loads(ln) for ln in (tmp_path / "one" / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"image": f"k{i}", "error": "no z", "text": "zz", "code": "text_too_long"} for i in range(3)]
    assert "explainer" not in json.loads((tmp_path / "one" / "config.json").read_text())["config"]  # config(): None

    def together(pixels, texts):  # a plain function: the defaults, but one row per image (its texts go together)
        if (pixels == 1).any():
            raise RuntimeError("boom")
        return [[{"text": ts[0], "score": 0.0, "map": px[0, :2, :2]}] for px, ts in zip(pixels, texts)]

    together.splits_texts = False
    explain_dataset(data, together, tmp_path / "two", batch_size=2, shard_size=2, num_workers=0, progress=False,
                    device="cpu")
    assert [r["image"] for r in read_maps(tmp_path / "two")] == ["k0", "k2"]
    errors = [json.loads(ln) for ln in (tmp_path / "two" / "errors.jsonl").read_text().splitlines()]
    assert errors == [{"image": "k1", "error": "RuntimeError: boom"}]  # one row for the image, not one per text
    inputs = json.loads((tmp_path / "two" / "manifest.json").read_text())["inputs"]
    assert inputs["texts"] is None and inputs["images_only_in_errors"] == 1
    with pytest.raises(TypeError, match="callable"):
        as_batch_explainer(42)
