"""The command line's user errors: every argument and output path checked before any work, one
line on stderr, exit status 2; and the images it reads (16-bit, huge, truncated)."""

import json

import numpy as np
import pytest
from PIL import Image

from captum_gradeclip import _io, models
from captum_gradeclip.cli import main
from captum_gradeclip.shapes import render_scene


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "scene.png"
    render_scene(seed=1).image.save(p)
    return p


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the errors must come before any work."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load", boom)
    monkeypatch.setattr(models, "load_shapes", boom)


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("captum-gradeclip: error: "), err
    for w in words:
        assert w in err[0], (w, err[0])


def test_explain_checks_texts_and_out_before_loading(tmp_path, image, no_model, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--text", ""], "--text number 1 is empty"),
        (["--text", "a dog", "--text", "   "], "--text number 2 is empty"),
        (["--text", "x", "--out", str(a_file / "fig.png")], "a file, not a folder"),
        (["--text", "x", "--out", str(a_file / "sub" / "fig.png")], "a file, not a folder"),
        (["--text", "x", "--out", str(tmp_path)], "must be a file name"),
        (["--text", "x", "--out", str(tmp_path / "fig.xyz")], "cannot write a .xyz figure"),
    ]
    for extra, words in cases:
        assert main(["explain", str(image), *extra]) == 2, extra
        _one_line_error(capsys, words)
    assert main(["demo", "--out", str(a_file / "demo.png")]) == 2
    _one_line_error(capsys, "a file, not a folder")


def test_explain_creates_missing_folders_and_reads_by_content(tmp_path):
    img = tmp_path / "scene.weird"  # a PNG under an extension PIL does not know: read by content
    render_scene(seed=2).image.save(img, format="PNG")
    out = tmp_path / "new" / "deeper" / "fig.png"
    assert main(["explain", str(img), "--text", "a red circle", "--out", str(out)]) == 0
    assert out.is_file()


def test_unreadable_images_are_one_line_errors(tmp_path, capsys):
    txt = tmp_path / "notes.xyz"
    txt.write_text("not an image")
    assert main(["explain", str(txt), "--text", "x", "--out", str(tmp_path / "f.png")]) == 2
    _one_line_error(capsys, "cannot read", "notes.xyz")


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    grey = np.full((32, 48), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    grey[:, :24] = 65535
    p = tmp_path / "g16.png"
    Image.fromarray(grey).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I")  # what PIL reads: convert("RGB") would clip it to white
    a = np.asarray(_io.open_image(str(p)))
    assert a.shape == (32, 48, 3)
    assert (a[:, :24] == 255).all() and (a[:, 24:] == 128).all()


def test_huge_jpeg_is_decoded_reduced(tmp_path, monkeypatch):
    monkeypatch.setattr(_io, "MAX_SHORT_SIDE", 256)
    big = render_scene(seed=3).image.resize((1600, 1200), Image.BILINEAR)
    p = tmp_path / "big.jpg"
    big.save(p, quality=95)
    im = _io.open_image(str(p))
    assert im.size == (341, 256) and im.mode == "RGB"
    full = np.asarray(Image.open(p).convert("RGB").resize((341, 256), Image.BICUBIC), dtype=np.float32)
    assert np.abs(np.asarray(im, dtype=np.float32) - full).mean() < 6  # the same picture
    small = tmp_path / "small.png"
    render_scene(seed=3).image.save(small)
    assert _io.open_image(str(small)).size == (64, 64)  # small images untouched


@pytest.mark.parametrize("flags, words", [
    (["--step", "0"], "--step must be"),
    (["--step", "1.5"], "--step must be"),
    (["--step", "nan"], "--step must be"),
    (["--n", "0"], "--n must be >= 1"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--examples", "-1"], "--examples must be >= 0"),
])
def test_benchmark_checks_numbers_before_loading(tmp_path, no_model, capsys, flags, words):
    assert main(["benchmark", *flags, "--out-dir", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, words)


def test_benchmark_checks_paths_and_prompts_before_loading(tmp_path, no_model, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["benchmark", "--out-dir", str(a_file / "out")]) == 2
    _one_line_error(capsys, "a file, not a folder")
    assert main(["benchmark", "--out-dir", str(a_file)]) == 2
    _one_line_error(capsys, "is a file, not a folder")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    render_scene(seed=0).image.save(imgs / "0.png")
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n  \n")
    assert main(["benchmark", "--images", str(imgs), "--prompts", str(empty), "--out-dir", str(tmp_path / "b")]) == 2
    _one_line_error(capsys, "holds no prompt")


def test_benchmark_unknown_method_and_word_replacement(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["benchmark", "--n", "1", "--methods", "no-such-method", "--out-dir", str(out), "--no-memory"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'no-such-method' names no method" in err and "grad-eclip, grad-eclip:spatial=cosine_per_head" in err
    assert main(["benchmark", "--n", "1", "--word-replacement", "zzzq", "--out-dir", str(out), "--no-memory"]) == 2
    assert "not one token" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (out / "benchmark.json").exists()


def test_folder_benchmark_skips_a_truncated_image(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    render_scene(seed=0).image.save(imgs / "0.png")
    render_scene(seed=1).image.resize((256, 256)).save(imgs / "1.jpg")
    data = (imgs / "1.jpg").read_bytes()
    (imgs / "1.jpg").write_bytes(data[: len(data) // 3])  # truncated
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out = tmp_path / "b"
    assert main(["benchmark", "--images", str(imgs), "--prompts", str(prompts), "--step", "0.5",
                 "--methods", "grad-eclip", "--out-dir", str(out)]) == 0
    res = json.loads((out / "benchmark.json").read_text())
    assert res["images"] == 1 and res["skipped"] == ["1.jpg"]
    assert "skipped 1 unreadable image(s): 1.jpg" in capsys.readouterr().out
