"""A hostile sweep over the dataset engine (``explain-dataset``), ``finetune`` and the folder
benchmark, by the eight kinds of issue 23 (the test names start with ``test_k1_`` ... ``test_k8_``).

Every case ends as one of: a one-line error (exit status 2, or 130 for Ctrl-C, and one
``captum-gradeclip:`` line), an error row naming the input, or a result the case checks; and
after every job the output folder is sound (:func:`_sound`: no temporary file left, every shard
the one recorded, no input lost: rows + errors = inputs), and no fine-tuning output holds a NaN
weight (:func:`_no_nan`). Jobs are shared between cases where they can be (module fixtures), on
64 px ShapesCLIP scenes and a 1-layer random CLIP, to keep the sweep within seconds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyarrow")

from scale_helpers import assert_same_rows, rows_by_pair  # noqa: E402

from captum_gradeclip.cli import main  # noqa: E402

FAST = ["--workers", "0", "--no-progress", "--batch-size", "2", "--shard-size", "2"]
LONG = "a red circle " * 12  # 38 tokens: longer than ShapesCLIP's context of 32


def _scene(seed):
    from captum_gradeclip.shapes import render_scene

    return render_scene(seed=seed).image


def _rotated_png(upright, path):
    """``upright`` stored turned a quarter to the left, with EXIF orientation 6 (viewers turn it back)."""
    from PIL import Image

    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes())


def _cli(capsys, argv):
    """``(exit status, stderr lines)`` of the command line (a ``SystemExit`` counts as its status)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:  # not handled: a traceback for the user (pytest must not stop)
        code = "KeyboardInterrupt"
    return code, capsys.readouterr().err.strip().splitlines()


def _one_line(err, words, prefix="captum-gradeclip: error: "):
    """Exactly one message line, starting with ``prefix`` and holding ``words``; no traceback."""
    msgs = [ln for ln in err if ln.startswith("captum-gradeclip:")]
    assert len(msgs) == 1 and msgs[0].startswith(prefix) and words in msgs[0], err
    assert not any("Traceback" in ln for ln in err), err


def _job(images, out, *texts, extra=()):
    return [str(a) for a in ["explain-dataset", "--images", images, *texts, "--out", out, *FAST, *extra]]


def _errors(out):
    p = Path(out) / "errors.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []


def _sound(out):
    """No temporary file; every finished shard readable Parquet and, where its sums file records a
    sha256, those bytes; where the manifest counts the inputs, rows + errors = inputs by kind
    (whether it must count them is case ``test_k1_manifest_states_...``'s business)."""
    import hashlib

    import pyarrow.parquet as pq

    out = Path(out)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temporary files left"
    for p in out.glob("shard-*.parquet"):
        pq.ParquetFile(p)
        sums = out / "sums" / f"{p.stem}.json"
        if sums.exists():
            assert json.loads(sums.read_text())["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest(), p
    if (out / "manifest.json").exists():
        m = json.loads((out / "manifest.json").read_text())
        inputs = m.get("inputs")
        if inputs is not None:
            assert inputs["images"] == inputs["images_with_rows"] + inputs["images_only_in_errors"] == m["config"]["items"]
            assert inputs["texts"] == inputs["rows"] + inputs["text_errors"] and inputs["rows"] == m["totals"]["rows"]


def _no_nan(out):
    """No weight file under ``out`` (checkpoint, safetensors) holds a NaN or an infinity."""
    for p in Path(out).rglob("*"):
        if p.name == "checkpoint.pt":
            state = torch.load(p, map_location="cpu", weights_only=False)["model"]
        elif p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(p)
        else:
            continue
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), p


def _no_model_loading(monkeypatch):
    from captum_gradeclip import models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(models, "load", boom)
    monkeypatch.setattr(models, "load_shapes", boom)
    monkeypatch.setattr(models, "load_hf", boom)


# ---- shared inputs and jobs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """``images/`` (4 scenes, one in a subfolder), a prompt file, an image outside ``images/``."""
    root = tmp_path_factory.mktemp("sweep_dataset")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for s in range(4):
        _scene(s).save(images / ("sub" if s == 3 else "") / f"scene{s}.png")
    (root / "prompts.txt").write_text("a red circle\na blue square\n")
    _scene(9).save(root / "outside.png")
    return root


@pytest.fixture(scope="module")
def done(root):
    """A finished job over ``images/`` (4 images, 2 prompts: 2 shards)."""
    out = root / "done"
    assert main(_job(root / "images", out, "--prompts", root / "prompts.txt")) == 0
    return out


@pytest.fixture
def copy(done, tmp_path):
    """A copy of the finished job to tamper with."""
    return Path(shutil.copytree(done, tmp_path / "out"))


@pytest.fixture(scope="module")
def folder_job(root):
    """One job over a folder with a broken link, an EXIF-rotated image and its upright twin, and a
    prompt file with a BOM, CRLF line ends and a prompt longer than the context."""
    images = root / "odd"
    images.mkdir()
    for s in range(2):
        _scene(s).save(images / f"scene{s}.png")
    _scene(5).save(images / "upright.png")
    _rotated_png(_scene(5), images / "rotated.png")
    os.symlink(images / "gone.png", images / "link.png")
    prompts = root / "odd_prompts.txt"
    prompts.write_bytes(("\ufeffa red circle\r\na blue square\r\n" + LONG + "\r\n").encode("utf-8"))
    out = root / "odd_out"
    code = main(_job(images, out, "--prompts", prompts))
    return code, out


@pytest.fixture(scope="module")
def pairs_job(root):
    """One --pairs job: an empty texts list, ../ and absolute paths, an inner ../ that stays
    inside, a text longer than the context."""
    lines = [{"image": "scene0.png", "texts": ["a red circle", LONG]},
             {"image": "scene1.png", "texts": []},
             {"image": "../outside.png", "texts": ["a red circle"]},
             {"image": str(root / "outside.png"), "texts": ["a blue square"]},
             {"image": "sub/../scene2.png", "texts": ["a blue square"]}]
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = root / "pairs_out"
    code = main(_job(root / "images", out, "--pairs", pairs))
    return code, out, pairs


def _ok(job):
    code, out = job[:2]
    assert code == 0
    _sound(out)
    return out


# ---- 1. every input ends as a row or an error line ---------------------------------------------

def test_k1_broken_link_is_an_error_row(folder_job):
    out = _ok(folder_job)
    assert [e["image"] for e in _errors(out) if "text" not in e] == ["link.png"]


def test_k1_empty_texts_list_is_an_error_row(pairs_job):
    out = _ok(pairs_job)
    assert any(e["image"] == "scene1.png" and "no texts" in e["error"] for e in _errors(out))


def test_k1_explainer_returning_fewer_rows_loses_no_text(tmp_path):
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.scale import CLIPExplainer, explain_dataset

    clip = load_shapes()
    full = CLIPExplainer(clip)

    def first_only(pixels, texts):  # a buggy explainer: only each image's first text
        return [rs[:1] for rs in full(pixels, texts)]

    data = [(f"s{s}", clip.pixels([_scene(s)])[0], ["a red circle", "a blue square"]) for s in range(2)]
    explain_dataset(data, first_only, tmp_path / "out", batch_size=2, shard_size=2, num_workers=0, progress=False)
    _sound(tmp_path / "out")
    assert sorted((e["image"], e["text"]) for e in _errors(tmp_path / "out")) == [("s0", "a blue square"),
                                                                                  ("s1", "a blue square")]


def test_k1_undecodable_item_of_a_python_dataset_is_counted(tmp_path):
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.scale import CLIPExplainer, explain_dataset

    clip = load_shapes()
    data = [("good", clip.pixels([_scene(0)])[0], ["a red circle"]), ("flat", torch.zeros(64, 64), ["a red circle"])]
    explain_dataset(data, CLIPExplainer(clip), tmp_path / "out", batch_size=2, shard_size=2, num_workers=0,
                    progress=False)
    _sound(tmp_path / "out")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["inputs"]["images_only_in_errors"] == 1 and m["inputs"]["images_with_rows"] == 1


def test_k1_manifest_states_rows_plus_errors_equal_inputs(pairs_job):
    out = _ok(pairs_job)
    inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    assert inputs["images"] == 5 and inputs["texts"] == inputs["rows"] + inputs["text_errors"]
    assert "images_with_rows + images_only_in_errors" in inputs["checked"]


# ---- 2. integrity of what is already written -----------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_shard"])
def test_k2_damaged_finished_shard_is_named_on_rerun(root, copy, capsys, damage):
    shard = copy / "shard-00000.parquet"
    data = shard.read_bytes()
    shard.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not parquet at all" * 10,
                       "other_shard": (copy / "shard-00001.parquet").read_bytes()}[damage])
    code, err = _cli(capsys, _job(root / "images", copy, "--prompts", root / "prompts.txt"))
    assert code == 2
    _one_line(err, "shard-00000.parquet")
    assert "delete it" in err[-1]


def test_k2_read_maps_checks_the_manifest_sums(copy):
    from captum_gradeclip.scale import read_maps

    shutil.copy(copy / "shard-00001.parquet", copy / "shard-00000.parquet")
    with pytest.raises(ValueError, match="shard-00000.parquet.*delete it"):
        list(read_maps(copy))
    assert len(list(read_maps(copy, verify=False))) == 8  # skipping the check reads what is there


def test_k2_intact_rerun_skips_and_keeps_the_rows(root, done, copy, capsys):
    code, err = _cli(capsys, _job(root / "images", copy, "--prompts", root / "prompts.txt"))
    assert code == 0 and "2 shard(s) already done" in err[-1]
    assert rows_by_pair(copy) == rows_by_pair(done)
    _sound(copy)


# ---- 3. paths stay where they were asked to be ---------------------------------------------------

def test_k3_dotdot_path_is_an_error_row_naming_the_line(pairs_job):
    out = _ok(pairs_job)
    err = [e for e in _errors(out) if e["image"] == "../outside.png"]
    assert len(err) == 1 and "pairs.jsonl:3" in err[0]["error"] and "outside --images" in err[0]["error"]


def test_k3_absolute_path_is_an_error_row(pairs_job, root):
    out = _ok(pairs_job)
    assert any(e["image"] == (root / "outside.png").as_posix() and "pairs.jsonl:4" in e["error"] for e in _errors(out))
    assert not any("outside" in r[0] for r in rows_by_pair(out))


def test_k3_inner_dotdot_that_stays_inside_is_read(pairs_job):
    out = _ok(pairs_job)
    assert ("sub/../scene2.png", "a blue square") in rows_by_pair(out)


def test_k3_opt_in_reads_outside(root, tmp_path, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"image": "../outside.png", "texts": ["a red circle"]}) + "\n")
    code, err = _cli(capsys, _job(root / "images", tmp_path / "out", "--pairs", pairs,
                                  extra=["--allow-outside-images"]))
    assert code == 0, err
    assert list(rows_by_pair(tmp_path / "out")) == [("../outside.png", "a red circle")]
    _sound(tmp_path / "out")


# ---- 4. texts as the model sees them -------------------------------------------------------------

def test_k4_prompt_longer_than_the_context_is_an_error_row_and_counted(folder_job):
    out = _ok(folder_job)
    long = [e for e in _errors(out) if e.get("text") == LONG.strip()]
    # the 4 images that decode (not the broken link)
    assert len(long) == 4 and all(e["code"] == "text_too_long" and "context of 32" in e["error"] for e in long)
    assert json.loads((out / "manifest.json").read_text())["warnings"]["texts_too_long"] == 4
    assert not any(t == LONG.strip() for _, t in rows_by_pair(out))


def test_k4_long_text_in_pairs_is_an_error_row(pairs_job):
    out = _ok(pairs_job)
    assert ("scene0.png", "a red circle") in rows_by_pair(out)
    assert any(e["image"] == "scene0.png" and e.get("code") == "text_too_long" for e in _errors(out))


def test_k4_bom_and_crlf_are_not_part_of_the_texts(folder_job):
    out = _ok(folder_job)
    texts = {t for _, t in rows_by_pair(out)}
    assert texts == {"a red circle", "a blue square"}


def test_k4_bom_in_a_pairs_file(tmp_path):
    from captum_gradeclip.scale import pair_items

    (tmp_path / "i").mkdir()
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": "a.png", "texts": ["x"]}).encode() + b"\r\n")
    assert [(it.image, it.texts) for it in pair_items(tmp_path / "i", str(p))] == [("a.png", ("x",))]


def test_k4_bom_in_a_finetune_pairs_file(tmp_path):
    from PIL import Image

    from captum_gradeclip.finetune.data import read_pairs

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    p = tmp_path / "p.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": "a.png", "caption": "a red circle",
                                                "phrases": ["red circle"]}).encode() + b"\r\n")
    assert read_pairs(p)[0].caption == "a red circle"


def test_k4_file_name_that_is_not_utf8_is_an_error_row(root, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    _scene(0).save(images / "ok.png")
    bad = os.path.join(os.fsencode(images), b"caf\xe9.png")
    with open(bad, "wb") as f:
        f.write((images / "ok.png").read_bytes())
    code, err = _cli(capsys, _job(images, tmp_path / "out", "--prompts", root / "prompts.txt"))
    assert code == 0, err
    errors = _errors(tmp_path / "out")
    assert len(errors) == 1 and "not valid UTF-8" in errors[0]["error"] and "caf" in errors[0]["image"]
    assert len(rows_by_pair(tmp_path / "out")) == 2
    _sound(tmp_path / "out")


# ---- 5. images as people see them ----------------------------------------------------------------

@pytest.mark.parametrize("suffix, size", [(".png", (40, 60)), (".jpg", (40, 60)), (".jpg", (1200, 1500))])
def test_k5_open_image_applies_the_exif_orientation(tmp_path, suffix, size):
    import numpy as np
    from PIL import Image

    from captum_gradeclip._io import MAX_SHORT_SIDE, open_image

    upright = Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype(np.uint8))
    path = tmp_path / f"r{suffix}"
    _rotated_png(upright, path)
    got = open_image(str(path))
    scale = min(1.0, MAX_SHORT_SIDE / min(size))
    assert got.size == tuple(round(v * scale) for v in size)
    if suffix == ".png":
        assert (np.asarray(got) == np.asarray(upright)).all()


def test_k5_dataset_rows_of_a_rotated_image_are_its_upright_twin(folder_job):
    out = _ok(folder_job)
    rows = rows_by_pair(out)
    import numpy as np

    for t in ("a red circle", "a blue square"):
        a, b = (np.frombuffer(rows[(k, t)][1], dtype=np.float16).astype(np.float32) for k in ("rotated.png",
                                                                                              "upright.png"))
        assert abs(rows[("rotated.png", t)][0] - rows[("upright.png", t)][0]) < 1e-4
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()  # float16 maps of the same pixels


def test_k5_benchmark_and_finetune_read_upright(tmp_path):
    from captum_gradeclip.finetune.data import read_pairs
    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.scale import ImageFolderDataset, WorkItem

    _scene(5).save(tmp_path / "up.png")
    _rotated_png(_scene(5), tmp_path / "rot.png")
    clip = load_shapes()  # the folder benchmark reads through ImageFolderDataset
    ds = ImageFolderDataset(tmp_path, [WorkItem("rot.png", ("x",)), WorkItem("up.png", ("x",))], clip.pixels)
    assert torch.equal(ds[0].pixels, ds[1].pixels)
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "rot.png", "caption": "a red circle",
                                                  "phrases": ["red circle"]}) + "\n")
    assert read_pairs(tmp_path / "p.jsonl")[0].image.tobytes() == _scene(5).tobytes()


# ---- 6. fine-tuning never continues the wrong run or saves a broken model ----------------------

def _tiny_clip(path, seed):
    from transformers import CLIPModel

    from captum_gradeclip.shapes.model import build_config, build_processor

    processor = build_processor()
    tok = processor.tokenizer
    cfg = build_config(len(tok), tok.eos_token_id, tok.bos_token_id)
    cfg.vision_config.num_hidden_layers = cfg.text_config.num_hidden_layers = 1
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(path)
    processor.save_pretrained(path)


@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    """Two tiny CLIPs, two pairs files and a run stopped after its first step (of 2)."""
    root = tmp_path_factory.mktemp("sweep_finetune")
    for seed in (0, 1):
        _tiny_clip(root / f"clip{seed}", seed)
    for i in range(4):
        _scene(i).save(root / f"{i}.png")
    for name, caption in (("a", "a red circle and a blue bar"), ("b", "a green ring and a blue bar")):
        rows = [{"image": f"{i}.png", "caption": caption} for i in range(4)]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stopped = root / "stopped"
    assert main(_ft(root, stopped, "a", "clip0") + ["--stop-after", "1"]) == 0
    assert (stopped / "checkpoint.pt").is_file()
    return root, stopped


def _ft(root, out, pairs="a", model="clip0"):
    return ["finetune", "--out", str(out), "--model", str(root / model), "--pairs", str(root / f"{pairs}.jsonl"),
            "--separator", " and ", "--steps", "2", "--batch", "2", "--threads", "1", "--masks", "uniform",
            "--save-every", "1"]


@pytest.fixture
def stopped_copy(ft, tmp_path):
    return ft[0], Path(shutil.copytree(ft[1], tmp_path / "run"))


@pytest.mark.parametrize("pairs, model, words", [("b", "clip0", "data differs"), ("a", "clip1", "model differs")])
def test_k6_checkpoint_of_another_run_is_refused(stopped_copy, capsys, pairs, model, words):
    root, out = stopped_copy
    code, err = _cli(capsys, _ft(root, out, pairs, model))
    assert code == 2
    _one_line(err, "another run")
    assert words in err[-1]


def test_k6_resumed_run_keeps_the_whole_history(stopped_copy, capsys):
    root, out = stopped_copy
    code, err = _cli(capsys, _ft(root, out))
    assert code == 0, err
    stage = json.loads((out / "TRAINING.json").read_text())["stages"][-1]
    assert [row[0] for row in stage["log"]] == [0, 1]
    assert [(r["from_step"], r["to_step"]) for r in stage["runs"]] == [(0, 1), (1, 2)]
    _no_nan(out)


@pytest.mark.parametrize("lr", ["inf", "nan", "0", "-1"])
def test_k6_learning_rate_that_is_not_positive_and_finite(ft, tmp_path, capsys, monkeypatch, lr):
    _no_model_loading(monkeypatch)
    code, err = _cli(capsys, _ft(ft[0], tmp_path / "o") + ["--lr", lr])
    assert code == 2
    _one_line(err, "--lr must be")


def test_k6_diverging_run_stops_and_writes_no_nan_weights(ft, tmp_path, capsys):
    code, err = _cli(capsys, _ft(ft[0], tmp_path / "o") + ["--lr", "1e6", "--steps", "6"])
    assert code == 2
    _one_line(err, "lower --lr")
    assert not (tmp_path / "o" / "model.safetensors").exists()
    _no_nan(tmp_path / "o")


# ---- 7. every flag and field validated before work, one line each ------------------------------

NO_CUDA_DEVICE = "cuda:0" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


@pytest.mark.parametrize("flags, words", [
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--device", NO_CUDA_DEVICE], "--device cuda"),
    (["--device", "bogus"], "is not a device"),
    (["--class-prompts", "a photo of a {name}"], "once and plain"),
    (["--class-prompts", "{} and {}"], "once and plain"),
    (["--class-prompts", "a {:>10}"], "once and plain"),
    (["--class-prompts", "a {0}"], "once and plain"),
])
def test_k7_dataset_flags(root, tmp_path, capsys, monkeypatch, flags, words):
    _no_model_loading(monkeypatch)
    texts = [] if "--class-prompts" in flags else ["--prompts", root / "prompts.txt"]
    code, err = _cli(capsys, _job(root / "images", tmp_path / "out", *texts, extra=flags))
    assert code == 2
    _one_line(err, words)
    assert not (tmp_path / "out" / "config.json").exists()


@pytest.mark.parametrize("line, words", [('{"image": 7, "texts": ["x"]}', "pairs.jsonl:2"),
                                         ('{"image": null, "texts": ["x"]}', "pairs.jsonl:2")])
def test_k7_dataset_pairs_fields(root, tmp_path, capsys, monkeypatch, line, words):
    _no_model_loading(monkeypatch)
    (tmp_path / "pairs.jsonl").write_text('{"image": "scene0.png", "texts": ["x"]}\n' + line + "\n")
    code, err = _cli(capsys, _job(root / "images", tmp_path / "out", "--pairs", tmp_path / "pairs.jsonl"))
    assert code == 2
    _one_line(err, words)


def test_k7_pairs_file_not_utf8_names_file_and_line(root, tmp_path, capsys, monkeypatch):
    _no_model_loading(monkeypatch)
    (tmp_path / "pairs.jsonl").write_bytes(b'{"image": "scene0.png", "texts": ["x"]}\n{"image": "caf\xe9.png"}\n')
    code, err = _cli(capsys, _job(root / "images", tmp_path / "out", "--pairs", tmp_path / "pairs.jsonl"))
    assert code == 2
    _one_line(err, "pairs.jsonl:2: not UTF-8")


@pytest.mark.parametrize("flags, words", [
    (["--save-every", "0"], "--save-every must be >= 1"),
    (["--threads", "-1"], "--threads must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--eval-scenes", "-1"], "--eval-scenes must be >= 0"),
])
def test_k7_finetune_flags(ft, tmp_path, capsys, monkeypatch, flags, words):
    _no_model_loading(monkeypatch)
    code, err = _cli(capsys, _ft(ft[0], tmp_path / "o") + flags)
    assert code == 2
    _one_line(err, words)
    assert not (tmp_path / "o").exists()


def test_k7_finetune_out_is_a_file(ft, tmp_path, capsys, monkeypatch):
    _no_model_loading(monkeypatch)
    (tmp_path / "o").write_text("a file")
    code, err = _cli(capsys, _ft(ft[0], tmp_path / "o"))
    assert code == 2
    _one_line(err, "is a file, not a folder")


@pytest.mark.parametrize("line, words", [
    ('{"image": 7, "caption": "a red circle", "phrases": ["red circle"]}', "p.jsonl:1"),
    ('{"image": null, "caption": "a red circle", "phrases": ["red circle"]}', "p.jsonl:1"),
])
def test_k7_finetune_pairs_fields(tmp_path, line, words):
    from captum_gradeclip.finetune.data import DataError, read_pairs

    (tmp_path / "p.jsonl").write_text(line + "\n")
    with pytest.raises(DataError, match=words):
        read_pairs(tmp_path / "p.jsonl")


def test_k7_finetune_pairs_not_utf8(tmp_path):
    from captum_gradeclip.finetune.data import DataError, read_pairs

    (tmp_path / "p.jsonl").write_bytes(b'\n{"image": "caf\xe9.png", "caption": "x"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: not UTF-8"):
        read_pairs(tmp_path / "p.jsonl")


@pytest.mark.parametrize("bad", [["--layers", "-99"], ["--model", "no/such/model"]])
def test_k7_failed_start_leaves_no_config_behind(root, tmp_path, capsys, bad):
    out = tmp_path / "out"
    code, err = _cli(capsys, _job(root / "images", out, "--prompts", root / "prompts.txt", extra=bad))
    assert code == 2
    _one_line(err, "")
    assert not (out / "config.json").exists()
    if bad[0] == "--layers":  # the corrected command is not refused as "another job"
        assert main(_job(root / "images", out, "--prompts", root / "prompts.txt", extra=["--layers", "-1"])) == 0
        _sound(out)


def test_k7_benchmark_failed_start_leaves_no_state(root, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    _scene(0).save(flat / "a.png")
    bench = ["benchmark", "--images", flat, "--prompts", root / "prompts.txt", "--step", "0.5", "--batch", "1",
             "--out-dir", tmp_path / "b"]
    code, err = _cli(capsys, bench + ["--methods", "no such method"])
    assert code == 2
    _one_line(err, "names no method")
    assert not (tmp_path / "b" / "curves" / "config.json").exists()
    code, err = _cli(capsys, bench + ["--methods", "cls-attention"])
    assert code == 0, err


# ---- 8. interruptions --------------------------------------------------------------------------

def _fail_on_write(monkeypatch, exc, after=0):
    """``pq.write_table`` writes half a file, then raises ``exc`` (from its ``after + 1``-th call)."""
    import pyarrow.parquet as pq

    real, calls = pq.write_table, []

    def write(table, where, *a, **k):
        calls.append(where)
        if len(calls) > after:
            Path(where).write_bytes(b"PAR1 half a file")
            raise exc
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", write)


@pytest.mark.parametrize("after", [0, 1])
def test_k8_ctrl_c_while_writing_a_shard(root, done, tmp_path, capsys, monkeypatch, after):
    out = tmp_path / "out"
    _fail_on_write(monkeypatch, KeyboardInterrupt(), after)
    code, err = _cli(capsys, _job(root / "images", out, "--prompts", root / "prompts.txt"))
    assert code == 130
    _one_line(err, "run the same command to resume", prefix="captum-gradeclip: interrupted: ")
    assert len(list(out.glob("shard-*.parquet"))) == after
    _sound(out)
    monkeypatch.undo()
    assert main(_job(root / "images", out, "--prompts", root / "prompts.txt")) == 0
    assert_same_rows(rows_by_pair(out), rows_by_pair(done))  # computed again: to float32 rounding
    _sound(out)


@pytest.mark.parametrize("where", ["parquet", "errors", "manifest.json"])
def test_k8_full_disk_is_one_line_and_the_rerun_resumes(root, done, tmp_path, capsys, monkeypatch, where):
    out = tmp_path / "out"
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "parquet":
        _fail_on_write(monkeypatch, full, after=1)
    else:
        from captum_gradeclip.scale import store

        real = store._atomic_write

        def no_space(path, data):
            if where in (path.parent.name, path.name):
                raise full
            real(path, data)

        monkeypatch.setattr(store, "_atomic_write", no_space)
    code, err = _cli(capsys, _job(root / "images", out, "--prompts", root / "prompts.txt"))
    assert code == 2
    _one_line(err, str(out))
    assert "space" in err[-1] and ("MiB" in err[-1] or where == "manifest.json")
    _sound(out)
    monkeypatch.undo()
    assert main(_job(root / "images", out, "--prompts", root / "prompts.txt")) == 0
    assert_same_rows(rows_by_pair(out), rows_by_pair(done))  # computed again: to float32 rounding
    _sound(out)


def test_k8_real_sigint_exits_130_in_one_line(root, tmp_path, capsys, monkeypatch):
    """A real SIGINT (what Ctrl-C sends), raised by the engine's fault seam after the first shard."""
    from scale_fault import inject

    from captum_gradeclip.scale import engine

    monkeypatch.setattr(engine, "after_shard", getattr(engine, "after_shard", None), raising=False)  # restored after
    inject("sigint", "0:1")
    out = tmp_path / "out"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh command's process
    try:
        code, err = _cli(capsys, _job(root / "images", out, "--prompts", root / "prompts.txt"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130
    _one_line(err, "1 finished shard(s) kept", prefix="captum-gradeclip: interrupted: ")
    assert [p.name for p in out.glob("shard-*.parquet")] == ["shard-00000.parquet"]
    _sound(out)


def test_k8_ctrl_c_in_finetune_keeps_the_checkpoint(ft, tmp_path, capsys, monkeypatch):
    from captum_gradeclip.finetune import train

    real, calls = train._step, []

    def step(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "_step", step)
    out = tmp_path / "o"
    code, err = _cli(capsys, _ft(ft[0], out))
    assert code == 130
    _one_line(err, "run the same command to resume", prefix="captum-gradeclip: interrupted: ")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 1
    assert not list(out.glob("*.tmp"))
    monkeypatch.undo()
    assert main(_ft(ft[0], out)) == 0
    _no_nan(out)


def test_k2_truncated_finetune_checkpoint_is_one_line(stopped_copy, capsys):
    root, out = stopped_copy
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:1000])
    code, err = _cli(capsys, _ft(root, out))
    assert code == 2
    _one_line(err, "checkpoint.pt cannot be read")
    assert "delete it" in err[-1]
