"""The console script: demo, explain and benchmark, and their errors."""

import json

import pytest
from PIL import Image

from captum_gradeclip.cli import main
from captum_gradeclip.shapes import render_scene


def _is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and im.size[0] > 200


def test_demo_writes_a_png(tmp_path):
    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    assert _is_png(out)


def test_explain_any_image(tmp_path):
    img = tmp_path / "scene.jpg"
    render_scene(seed=3).image.resize((96, 80)).save(img)
    out = tmp_path / "fig.png"
    assert main(["explain", str(img), "--text", "a red circle", "--text", "a blue bar", "--out", str(out)]) == 0
    assert _is_png(out)


def test_explain_errors(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nope.png"), "--text", "x"]) == 2
    assert "image file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["explain", str(bad), "--text", "x"]) == 2
    assert "cannot read" in capsys.readouterr().err
    good = tmp_path / "ok.png"
    render_scene(seed=1).image.save(good)
    assert main(["explain", str(good), "--text", "x", "--model", str(tmp_path / "no_such_model")]) == 2
    assert "could not load CLIP model" in capsys.readouterr().err
    assert main(["explain", str(good)]) == 2
    assert "at least one --text" in capsys.readouterr().err
    assert main(["explain", str(good), "--text", "x", "--model", "m", "--open-clip", "RN50"]) == 2
    assert "not both" in capsys.readouterr().err


def test_explain_with_open_clip(tmp_path, capsys):
    pytest.importorskip("open_clip")
    img = tmp_path / "scene.png"
    render_scene(seed=3).image.save(img)
    out = tmp_path / "fig.png"
    assert main(["explain", str(img), "--text", "a red circle", "--text", "a blue bar",
                 "--open-clip", "ViT-B-32", "--out", str(out)]) == 0
    assert _is_png(out) and "random weights" in capsys.readouterr().err
    assert main(["explain", str(img), "--text", "x", "--open-clip", "No-Such-Arch"]) == 2
    assert "could not load open_clip model 'No-Such-Arch'" in capsys.readouterr().err


def test_benchmark_quick_path_end_to_end(tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", "--quick", "--n", "2", "--step", "0.1", "--out-dir", str(out), "--no-memory"]) == 0
    res = json.loads((out / "benchmark.json").read_text())
    assert "Grad-ECLIP (cosine, default)" in res["image"] and "RISE (500 masks)" in res["image"]
    for r in res["image"].values():
        assert 0 <= r["pointing_game"] <= 1 and r["deletion_auc"] == r["deletion_auc"]
    assert "Captum LayerIntegratedGradients (token embeddings)" in res["text"]
    assert _is_png(out / "benchmark.png")


def test_benchmark_folder_mode(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for s in range(2):
        render_scene(seed=s).image.save(imgs / f"{s}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green bar\n")
    out = tmp_path / "bench"
    assert main(["benchmark", "--images", str(imgs), "--prompts", str(prompts), "--step", "0.25",
                 "--methods", "grad-eclip", "cls-attention", "--out-dir", str(out)]) == 0
    res = json.loads((out / "benchmark.json").read_text())
    assert res["images"] == 2 and set(res["image"]) == {"Grad-ECLIP (cosine, default)", "CLS attention"}


def test_benchmark_folder_errors(tmp_path, capsys):
    assert main(["benchmark", "--images", str(tmp_path / "none"), "--prompts", "p.txt"]) == 2
    assert "must be a folder" in capsys.readouterr().err
    assert main(["benchmark", "--images", str(tmp_path)]) == 2
    assert "go together" in capsys.readouterr().err


@pytest.mark.slow
def test_speed_benchmark_cell_runs():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed", path)
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    cell = speed.run_cell(True, "attribute_all", 32, 2, 1)
    assert cell["seconds"] > 0 and cell["peak_mb"] > 0


def test_benchmark_folder_mode_with_open_clip(tmp_path, capsys):
    pytest.importorskip("open_clip")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    render_scene(seed=0).image.save(imgs / "0.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "bench"
    assert main(["benchmark", "--open-clip", "ViT-B-32", "--images", str(imgs), "--prompts", str(prompts),
                 "--step", "0.25", "--methods", "grad-eclip", "game", "layer-gradcam", "--out-dir", str(out)]) == 0
    res = json.loads((out / "benchmark.json").read_text())
    assert set(res["image"]) == {"Grad-ECLIP (cosine, default)", "GAME (Chefer et al.)",
                                 "Captum LayerGradCam (patch embedding)"}
    for r in res["image"].values():
        assert r["deletion_auc"] == r["deletion_auc"] and r["ms_per_explanation"] > 0
    assert main(["benchmark", "--open-clip", "ViT-B-32", "--out-dir", str(out)]) == 2
    assert "give --images and --prompts too" in capsys.readouterr().err
