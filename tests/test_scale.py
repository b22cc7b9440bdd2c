"""The dataset engine in one process: rows against a direct attribute_all, the output folder,
errors, resumption and the refusals that come before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyarrow")

from scale_helpers import make_folder, rows_by_pair  # noqa: E402

from captum_gradeclip import ImageGradECLIP  # noqa: E402
from captum_gradeclip.cli import main  # noqa: E402
from captum_gradeclip.models import load_shapes  # noqa: E402
from captum_gradeclip.scale import (  # noqa: E402
    AttributeAllExplainer,
    CLIPExplainer,
    ImageFolderDataset,
    explain_dataset,
    pair_items,
    prompt_items,
    read_maps,
)

FAST = ["--workers", "0", "--no-progress", "--batch-size", "2", "--shard-size", "3"]


@pytest.fixture(scope="module")
def clip():
    return load_shapes()


def _run(images: Path, prompts: Path, out: Path, *extra: str) -> int:
    return main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(out), *FAST, *extra])


def test_rows_are_attribute_all_of_each_batch(tmp_path, clip):
    from PIL import Image

    images, prompts = make_folder(tmp_path, n=5)
    assert _run(images, prompts, tmp_path / "out") == 0
    rows = list(read_maps(tmp_path / "out"))
    texts = ["a red circle", "a blue square", "a green triangle"]
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert sorted((r["image"], r["text"]) for r in rows) == sorted((f, t) for f in files for t in texts)
    # independently: the shards' batches (3 per shard, 2 per batch) explained directly
    sim = clip.image_similarity(*clip.tokens(sorted(texts)))
    expl = ImageGradECLIP(sim, clip.image_layers[-1])
    got = {(r["image"], r["text"]): r for r in rows}
    for batch in (files[0:2], files[2:3], files[3:5]):
        px = clip.pixels([Image.open(images / f).convert("RGB") for f in batch])
        maps = expl.attribute_all(px)
        with torch.no_grad():
            scores = sim(px)
        for n, f in enumerate(batch):
            for k, t in enumerate(sorted(texts)):
                r = got[(f, t)]
                assert r["map"].shape == maps.shape[2:]
                torch.testing.assert_close(r["map"], maps[n, k].half().float(), rtol=0, atol=0)
                assert r["score"] == pytest.approx(float(scores[n, k]), abs=1e-6)
                assert r["text_index"] == texts.index(t)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"] == {"shards": 2, "rows": 15, "errors": 0}
    assert [s["rows"] for s in manifest["shards"]] == [9, 6]
    assert manifest["config"]["explainer"]["method"] == "grad-eclip"
    assert "torch" in manifest["versions"]


def test_corrupt_and_zero_byte_images_are_error_rows(tmp_path, capsys):
    images, prompts = make_folder(tmp_path, n=4, bad=True)
    # through DataLoader workers (decoding in another process)
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out",
                 str(tmp_path / "out"), "--workers", "1", "--no-progress", "--shard-size", "4"]) == 0
    errors = [json.loads(ln) for ln in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["image"] for e in errors) == ["empty.png", "sub/broken.jpg"]
    reasons = {e["image"]: e["error"] for e in errors}
    assert reasons["empty.png"].startswith(f"cannot read {images / 'empty.png'} as an image (UnidentifiedImageError")
    assert reasons["sub/broken.jpg"].startswith(f"cannot read {images / 'sub/broken.jpg'} as an image")
    assert {r["image"] for r in read_maps(tmp_path / "out", columns=["image"])} == \
        {p.relative_to(images).as_posix() for p in images.rglob("scene*.png")}
    assert "6 images, 12 pairs, 2 errors" in capsys.readouterr().err  # 4 good images x 3 prompts
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"] == {"shards": 2, "rows": 12, "errors": 2}


def test_unwritable_out_fails_before_loading_the_model(tmp_path, capsys, monkeypatch):
    images, prompts = make_folder(tmp_path, n=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr("captum_gradeclip.models.load", lambda *a: pytest.fail("model loaded"))
    assert _run(images, prompts, blocker / "out") == 2
    err = capsys.readouterr().err
    assert "cannot write to --out" in err and str(blocker / "out") in err


def test_other_configuration_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    images, prompts = make_folder(tmp_path, n=3)
    out = tmp_path / "out"
    assert _run(images, prompts, out) == 0
    before = {p.name: p.read_bytes() for p in out.glob("shard-*")}
    monkeypatch.setattr("captum_gradeclip.models.load", lambda *a: pytest.fail("model loaded"))
    assert _run(images, prompts, out, "--spatial", "uniform") == 2
    err = capsys.readouterr().err
    assert "holds another job" in err and "explainer" in err
    other = tmp_path / "other.txt"
    other.write_text("a red circle\n")
    assert _run(images, other, out) == 2
    assert "holds another job" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.glob("shard-*")} == before


def test_rerun_skips_finished_shards_and_redoes_missing_ones(tmp_path, capsys):
    images, prompts = make_folder(tmp_path, n=7)
    out = tmp_path / "out"
    assert _run(images, prompts, out) == 0
    first = rows_by_pair(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / "shard-00001.parquet").unlink()
    (out / "manifest.json").unlink()
    capsys.readouterr()
    assert _run(images, prompts, out) == 0
    err = capsys.readouterr().err
    assert "this run: 3 images" in err and "2 shard(s) already done" in err
    assert rows_by_pair(out) == first
    for name, t in mtimes.items():
        if name != "shard-00001.parquet":
            assert (out / name).stat().st_mtime_ns == t  # a finished shard is never rewritten
    assert (out / "manifest.json").exists()


def test_pairs_explain_each_image_for_its_own_texts(tmp_path, clip):
    images, _ = make_folder(tmp_path, n=3)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": "scene1.png", "texts": ["a red circle", "a blue ring"]}) + "\n"
                     + json.dumps({"image": "sub/scene0.png", "texts": ["a green cross"]}) + "\n"
                     + json.dumps({"image": "scene1.png", "texts": ["a red circle"]}) + "\n")
    items = pair_items(images, str(pairs))
    assert [(it.image, it.texts) for it in items] == [("scene1.png", ("a red circle", "a blue ring")),
                                                      ("sub/scene0.png", ("a green cross",))]
    explain_dataset(ImageFolderDataset(images, items, clip.pixels), CLIPExplainer(clip), tmp_path / "out",
                    num_workers=0, progress=False)
    rows = {(r["image"], r["text"]): r for r in read_maps(tmp_path / "out")}
    assert sorted(rows) == [("scene1.png", "a blue ring"), ("scene1.png", "a red circle"),
                            ("sub/scene0.png", "a green cross")]
    # the union of the batch's texts as columns gives each image the map of its own texts alone
    from PIL import Image

    px = clip.pixels([Image.open(images / "sub/scene0.png").convert("RGB")])
    alone = ImageGradECLIP(clip.image_similarity(*clip.tokens(["a green cross"])), clip.image_layers[-1]).attribute_all(px)
    torch.testing.assert_close(rows[("sub/scene0.png", "a green cross")]["map"], alone[0, 0], atol=2e-3, rtol=1e-2)


def test_any_attribution_with_attribute_all_and_bad_texts_as_errors(tmp_path, clip):
    images, _ = make_folder(tmp_path, n=2)
    texts = ["a red circle", "a blue square"]
    sim = clip.image_similarity(*clip.tokens(texts))
    items = prompt_items(images, texts)
    items[0] = type(items[0])(items[0].image, ("a red circle", "not a column"))
    summary = explain_dataset(ImageFolderDataset(images, items, clip.pixels),
                              AttributeAllExplainer(ImageGradECLIP(sim, clip.image_layers[-1]), texts),
                              tmp_path / "out", config={"note": "test"}, num_workers=0, progress=False)
    assert summary.pairs == 3 and summary.errors == 1
    err = json.loads((tmp_path / "out" / "errors.jsonl").read_text())
    assert err["text"] == "not a column" and "not columns" in err["error"]


def test_text_maps_and_class_prompts(tmp_path):
    from captum_gradeclip.shapes import render_scene

    for k, cls in enumerate(["red_circle", "blue_square"]):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        render_scene(seed=k).image.save(tmp_path / "tree" / cls / "a.png")
    assert main(["explain-dataset", "--images", str(tmp_path / "tree"), "--class-prompts", "a {}",
                 "--out", str(tmp_path / "out"), "--text-maps", *FAST]) == 0
    rows = list(read_maps(tmp_path / "out"))
    assert sorted({r["text"] for r in rows}) == ["a blue square", "a red circle"] and len(rows) == 4
    for r in rows:
        assert r["words"] == r["text"].split() and r["word_map"].shape == (len(r["words"]),)
        assert (r["word_map"] >= 0).all() and r["map"].shape == (8, 8)


def test_readme_python_example_runs(tmp_path, monkeypatch):
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "dataset.md").read_text()
    section = text.split("**From Python**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/dataset.md explain_dataset example", "exec"), scope)
    assert scope["summary"].pairs == sum(len(sc.prompts) for sc in scope["scenes"])
    assert len(scope["maps"]) == 8 and all(m.shape == (8, 8) for m in scope["maps"].values())


def test_input_errors_are_one_line(tmp_path, capsys):
    images, prompts = make_folder(tmp_path, n=1)
    out = ["--out", str(tmp_path / "out")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "scene0.png", "texts": ["a"]}\nnot json\n')
    cases = [(["--pairs", str(bad)], "bad.jsonl:2: expected"),
             (["--class-prompts", "a photo"], "must contain {}"),
             (["--prompts", str(tmp_path / "missing.txt")], "--prompts must be a text file"),
             (["--prompts", str(prompts), "--batch-size", "0"], "--batch-size, --shard-size and --text-chunk must be >= 1")]
    for flags, message in cases:
        assert main(["explain-dataset", "--images", str(images), *flags, *out]) == 2
        assert message in capsys.readouterr().err
    assert main(["explain-dataset", "--images", str(tmp_path / "none"), "--prompts", str(prompts), *out]) == 2
    assert "--images must be a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_text_chunks_give_the_rows_of_one_backward(tmp_path):
    """--text-chunk 1 (one forward and backward per prompt) writes the maps of one batched
    backward over all prompts (equal after float16), and is part of the job's configuration."""
    images, prompts = make_folder(tmp_path, n=3)
    assert _run(images, prompts, tmp_path / "all") == 0
    assert _run(images, prompts, tmp_path / "one", "--text-chunk", "1") == 0
    a = {(r["image"], r["text"]): r for r in read_maps(tmp_path / "all")}
    b = {(r["image"], r["text"]): r for r in read_maps(tmp_path / "one")}
    assert a.keys() == b.keys() and len(a) == 9
    for key in a:
        torch.testing.assert_close(a[key]["map"], b[key]["map"], rtol=1e-3, atol=1e-4)
        assert a[key]["score"] == pytest.approx(b[key]["score"], abs=1e-6)
    config = json.loads((tmp_path / "one" / "manifest.json").read_text())["config"]
    assert config["explainer"]["text_chunk"] == 1
    assert _run(images, prompts, tmp_path / "bad", "--text-chunk", "0") == 2
