"""Hugging Face datasets and WebDataset readers (scale.sources): the rows of the folder reader on
the same images, error rows for bad records, and 2 torchrun processes = 1."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from captum_gradeclip.cli import main
from captum_gradeclip.scale import read_maps
from captum_gradeclip.scale.sources import expand_braces

N = 4


def _datasets():
    return pytest.importorskip("datasets", reason="the data extra (pip install 'captum-gradeclip[data]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from captum_gradeclip.shapes import render_scene

    root = tmp_path_factory.mktemp("src")
    (root / "img").mkdir()
    files, labels = [], []
    for s in range(N):
        path = root / "img" / f"s{s}.png"
        render_scene(seed=s).image.save(path)
        files.append(path)
        labels.append(s % 2)
    (root / "prompts.txt").write_text("a red circle\na blue square\n")
    try:
        import datasets
    except ImportError:  # the WebDataset tests need only tarfile
        datasets = None
    if datasets is not None:
        _save_hf(datasets, root, files, labels)
    for shard in range(2):  # WebDataset: two shards, the images split between them
        with tarfile.open(root / f"wds-{shard:03d}.tar", "w") as tar:
            for f in files[shard::2]:
                tar.add(f, arcname=f.name)
                _add(tar, f.stem + ".cls", str(labels[files.index(f)]).encode())
    return root


def _save_hf(datasets, root, files, labels):
    from captum_gradeclip.shapes import COLOUR_NAMES

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=COLOUR_NAMES[:2]),
                                  "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files], "label": labels,
                                     "text": ["a red circle"] * N}, features=features)
    ds.save_to_disk(str(root / "hf"))
    ds.to_parquet(str(root / "data.parquet"))


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _rows(out):
    return {(r["image"], r["text"]): r for r in read_maps(out)}


def test_braces():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


@pytest.mark.parametrize("kind", ["hf", "parquet", "webdataset"])
def test_rows_equal_the_folder_readers(data, tmp_path, kind):
    if kind != "webdataset":
        _datasets()
    source = {"hf": ["--hf-dataset", str(data / "hf")], "parquet": ["--hf-dataset", str(data / "data.parquet")],
              "webdataset": ["--webdataset", str(data / "wds-{000..001}.tar")]}[kind]
    common = ["--prompts", str(data / "prompts.txt"), "--batch-size", "2", "--shard-size", "2", "--workers", "0",
              "--no-progress"]
    folder = tmp_path / "folder"
    if not folder.exists():
        assert main(["explain-dataset", "--images", str(data / "img"), "--out", str(folder), *common]) == 0
    assert main(["explain-dataset", *source, "--out", str(tmp_path / kind), *common]) == 0
    a, b = _rows(folder), _rows(tmp_path / kind)
    assert sorted(a) == sorted(b) and len(a) == 2 * N  # keys: the images' file names
    for k in a:  # the same pixels in the same batches, in this process: the same float16 maps
        assert torch.equal(a[k]["map"], b[k]["map"]) and a[k]["score"] == b[k]["score"]


def test_bad_records_are_error_rows_and_texts_from_the_dataset(data, tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.add(data / "img" / "s0.png", arcname="ok.png")
        _add(tar, "ok.txt", b"a red circle\na blue ring\n")
        _add(tar, "broken.png", b"not a png")
        _add(tar, "broken.txt", b"a red circle\n")
    out = tmp_path / "out"
    assert main(["explain-dataset", "--webdataset", str(tmp_path / "bad.tar"), "--out", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    rows = _rows(out)
    assert sorted(rows) == [("ok.png", "a blue ring"), ("ok.png", "a red circle")]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["image"] for e in errors] == ["broken.png"] and "cannot read the image of record broken.png" in errors[0]["error"]
    assert main(["explain-dataset", "--webdataset", str(tmp_path / "missing-{0..1}.tar"), "--out",
                 str(tmp_path / "o2")]) == 2


def test_hf_column_errors(data, tmp_path):
    _datasets()
    assert main(["explain-dataset", "--hf-dataset", str(data / "hf"), "--text-column", "nope", "--out",
                 str(tmp_path / "o2")]) == 2


def test_protocol_and_segment_read_sources(data, tmp_path):
    import pyarrow.parquet as pq

    (tmp_path / "names.txt").write_text("red\nblue\n")
    argv = ["benchmark", "--protocol", "grad-eclip", "--webdataset", str(data / "wds-{000..001}.tar"),
            "--class-names", str(tmp_path / "names.txt"), "--templates", "a {} shape", "--methods", "grad-eclip",
            "--out-dir", str(tmp_path / "p"), "--n", "2"]
    assert main(argv) == 0
    rows = pq.read_table(tmp_path / "p" / "curves" / "shard-00000.parquet").to_pylist()
    assert {(r["image"], r["label"]) for r in rows} == {("s0.png", 0), ("s1.png", 1)}  # one per class in turn
    out = tmp_path / "seg"
    assert main(["segment", "--webdataset", str(data / "wds-{000..001}.tar"), "--prompts", str(data / "prompts.txt"),
                 "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"s{s}.png" for s in range(N)]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(data, tmp_path):
    """WebDataset shards (tarfile only: the quickest processes to start) on 2 ranks and on 1."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    common = ["explain-dataset", "--webdataset", str(data / "wds-{000..001}.tar"), "--prompts",
              str(data / "prompts.txt"), "--batch-size", "1", "--shard-size", "1", "--workers", "0", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "captum_gradeclip", *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) == 2 * N  # every (image, text) once: no duplicates, none lost
    logs = [(tmp_path / "two" / "logs" / f"rank-{r}.log").read_text().splitlines() for r in (0, 1)]
    assert sorted(json.loads(x)["shard"] for lg in logs for x in lg) == list(range(N)) and all(logs)
    for k in a:  # other processes: float16 maps equal up to a float16 step of the map's scale
        tol = 1e-3 * float(a[k]["map"].abs().max()) + 1e-6
        assert torch.allclose(a[k]["map"], b[k]["map"], atol=tol) and abs(a[k]["score"] - b[k]["score"]) < 1e-5


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """An EXIF-rotated JPEG, a 16-bit grey PNG and a plain scene, as a folder, a tar and (with
    datasets) a save_to_disk folder and a Parquet file of the same bytes."""
    import numpy as np
    from PIL import Image

    from captum_gradeclip.shapes import render_scene

    root = tmp_path_factory.mktemp("odd")
    (root / "img").mkdir()
    upright = render_scene(seed=11).image
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6  # viewers turn it back: the folder reader sees `upright`
    stored.save(root / "img" / "rotated.jpg", exif=exif.tobytes(), quality=95)
    grey = np.asarray(render_scene(seed=12).image.convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(root / "img" / "deep.png")  # mode I;16: saturated by convert("RGB")
    render_scene(seed=13).image.save(root / "img" / "plain.png")
    files = sorted((root / "img").iterdir())
    with tarfile.open(root / "odd.tar", "w") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    try:
        import datasets
    except ImportError:
        return root
    ds = datasets.Dataset.from_dict({"image": [str(f) for f in files]}, features=datasets.Features({"image": datasets.Image()}))
    ds.save_to_disk(str(root / "hf"))
    ds.to_parquet(str(root / "odd.parquet"))
    return root


@pytest.mark.parametrize("kind", ["webdataset", "hf", "parquet"])
def test_exif_and_16_bit_images_read_as_the_folder_reader_reads_them(odd, data, tmp_path, kind):
    from captum_gradeclip._io import open_image

    deep = open_image(odd / "img" / "deep.png")
    assert 0 < max(deep.getextrema()[0]) < 255  # scaled, not saturated at 255
    if kind != "webdataset":
        _datasets()
    source = {"hf": ["--hf-dataset", str(odd / "hf")], "parquet": ["--hf-dataset", str(odd / "odd.parquet")],
              "webdataset": ["--webdataset", str(odd / "odd.tar")]}[kind]
    common = ["--prompts", str(data / "prompts.txt"), "--batch-size", "1", "--workers", "0", "--no-progress"]
    assert main(["explain-dataset", "--images", str(odd / "img"), "--out", str(tmp_path / "folder"), *common]) == 0
    assert main(["explain-dataset", *source, "--out", str(tmp_path / kind), *common]) == 0
    a, b = _rows(tmp_path / "folder"), _rows(tmp_path / kind)
    assert sorted(a) == sorted(b) and len(a) == 6
    for k in a:
        assert torch.equal(a[k]["map"], b[k]["map"]) and a[k]["score"] == b[k]["score"], k
    assert not (tmp_path / kind / ".hf-cache").exists()  # Parquet's Arrow copy: inside OUT, removed at the end


def test_parquet_leaves_nothing_in_the_users_hf_cache(odd, tmp_path, monkeypatch):
    datasets = _datasets()
    from captum_gradeclip.scale.sources import SourceConfig, open_source

    home = tmp_path / "hf-home"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home)
    src = open_source(SourceConfig(hf_dataset=str(odd / "odd.parquet")))
    assert len(src) == 3 and src.image(0).size == (64, 64)
    src = open_source(SourceConfig(hf_dataset=str(odd / "odd.parquet"), cache_dir=tmp_path / "out" / ".hf-cache"))
    assert [r.key for r in src.records] == ["deep.png", "plain.png", "rotated.jpg"]
    assert any((tmp_path / "out" / ".hf-cache").iterdir())
    assert not home.exists() or not any(home.rglob("*.arrow"))
