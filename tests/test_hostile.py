"""A hostile-file sweep over the newest surfaces (issue 31): the WebDataset and Hugging Face readers
of ``explain-dataset`` and ``segment``, the report, the app's upload and texts, and the templates.

Every case ends as one of: a one-line error (exit status 2 and one ``captum-gradeclip:`` line), an
error row naming the record, or a result the case checks; every job's manifest accounts for every
record (images = rows' images + error rows), and nothing is written outside the job's folder
(:func:`_nothing_outside`: the whole temporary tree walked before and after). Jobs are shared
between cases (module fixtures) on 64 px ShapesCLIP scenes.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

from captum_gradeclip.cli import main  # noqa: E402
from captum_gradeclip.errors import InputError  # noqa: E402

FAST = ["--workers", "0", "--no-progress", "--batch-size", "2", "--shard-size", "3"]


def _png(seed=0, size=None):
    from captum_gradeclip.shapes import render_scene

    im = render_scene(seed=seed).image
    buf = io.BytesIO()
    (im if size is None else im.resize(size)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb():
    """A 1-bit PNG declaring 13000 x 13000 px (about 20 KB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar, name, payload=b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


def _files(root):
    return {p for p in Path(root).rglob("*")}


def _nothing_outside(root, before, out):
    """Everything new under ``root`` lies under ``out`` (or is one of the folders above it)."""
    new = [p for p in _files(root) - before if out != p and out not in p.parents and p not in out.parents]
    assert not new, f"written outside {out}: {new}"


def _cli(capsys, argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


def _job(out):
    """``(rows {(image, text)}, errors {image: message}, manifest)`` of a finished job."""
    import pyarrow.parquet as pq

    rows = {(r["image"], r["text"]) for f in sorted(out.glob("shard-*.parquet"))
            for r in pq.read_table(f, columns=["image", "text"]).to_pylist()}
    errors = {}
    for line in (out / "errors.jsonl").read_text().splitlines():
        e = json.loads(line)
        errors.setdefault(e["image"], []).append(e["error"])
    return rows, errors, json.loads((out / "manifest.json").read_text())


def _accounted(manifest, records):
    inputs = manifest["inputs"]
    assert inputs["images"] == records == inputs["images_with_rows"] + inputs["images_only_in_errors"]


# ---------------------------------------------------------------- WebDataset: one job over hostile shards

BAD_NAME = b"\xff".decode("utf-8", "surrogateescape") + ".png"


@pytest.fixture(scope="module")
def wds(tmp_path_factory):
    """Two shards with every hostile member, run by explain-dataset and segment (with --prompts)."""
    root = tmp_path_factory.mktemp("wds")
    inp = root / "in"
    inp.mkdir()
    (inp / "prompts.txt").write_text("a red circle\na blue square\n")
    with tarfile.open(inp / "a.tar", "w", encoding="utf-8", errors="surrogateescape") as tar:
        _add(tar, "ok.png", _png(0))
        _add(tar, "ok.txt", b"a red circle\n")
        _add(tar, "k0.png", _png(1))
        _add(tar, "k1.png", _png(2))
        _add(tar, "k1.jpg", _png(3))
        _add(tar, "link.png", kind=tarfile.SYMTYPE, link="ok.png")
        _add(tar, "hard.png", kind=tarfile.LNKTYPE, link="ok.png")
        _add(tar, "d.png", kind=tarfile.DIRTYPE)
        _add(tar, "sub", kind=tarfile.DIRTYPE)
        _add(tar, "sub/inner.png", _png(4))
        _add(tar, BAD_NAME, _png(5))
        _add(tar, "bad.png", _png(6))
        _add(tar, "bad.txt", b"a blue \xff\xfe square\n")
        _add(tar, "only.txt", b"a red circle\n")
        _add(tar, "bomb.png", _bomb())
        _add(tar, "../../escaped/evil.png", _png(7))
        _add(tar, "/abs/evil2.png", _png(8))
    with tarfile.open(inp / "b.tar", "w") as tar:
        _add(tar, "k0.png", _png(9))
    out = root / "deep" / "er" / "out"  # ../../escaped from OUT/labels/ still lies under root
    before = _files(root)
    assert main(["explain-dataset", "--webdataset", str(inp / "{a,b}.tar"), "--prompts", str(inp / "prompts.txt"),
                 "--out", str(out / "explain"), *FAST]) == 0
    assert main(["segment", "--webdataset", str(inp / "{a,b}.tar"), "--prompts", str(inp / "prompts.txt"),
                 "--out", str(out / "segment"), "--no-progress"]) == 0
    _nothing_outside(root, before, out)
    return root, inp, out


#: record -> what its error row says (None: rows for both prompts).
WDS_CASES = {
    "ok.png": None,
    "../../escaped/evil.png": None,  # a key, not a path: explained, its PNGs under OUT/labels/_keys/
    "/abs/evil2.png": None,
    "sub/inner.png": None,  # a member under a layout folder
    "bad.png": None,  # its non-UTF-8 .txt is not used with --prompts
    "k0.png": "is used 2 times (a.tar: k0.png, b.tar: k0.png)",
    "k1.png": "the key 'k1' is used 2 times",
    "k1.jpg": "the key 'k1' is used 2 times",
    "link.png": "is a symbolic link",
    "hard.png": "is a hard link",
    "d.png": "is a directory",
    "\\xff.png": "not valid UTF-8",
    "only": "has no image",
    "bomb.png": "13000 x 13000 px (169 M pixels): refused before decoding",
}


@pytest.mark.parametrize("record", sorted(WDS_CASES))
def test_wds_every_member_is_a_row_or_an_error_row(wds, record):
    _, _, out = wds
    rows, errors, manifest = _job(out / "explain")
    says = WDS_CASES[record]
    if says is None:
        assert {t for i, t in rows if i == record} == {"a red circle", "a blue square"} and record not in errors
    else:
        assert record in errors and all(says in e for e in errors[record]) and not any(i == record for i, _ in rows)
    _accounted(manifest, 15)  # k0.png twice: 15 records from 18 members (2 folders, ok.txt and bad.txt)


def test_wds_segment_writes_every_key_inside_out(wds):
    _, _, out = wds
    seg = out / "segment"
    _, errors, manifest = _job(seg)
    _accounted(manifest, 15)
    labels = sorted(p.relative_to(seg / "labels").as_posix() for p in (seg / "labels").rglob("*.png"))
    assert "ok.png" in labels and "sub/inner.png" in labels and "bad.png" in labels
    hashed = [p for p in labels if p.startswith("_keys/")]
    assert len(hashed) == 2 and any(p.startswith("_keys/evil.png-") for p in hashed)  # ../../, /abs/
    import pyarrow.parquet as pq

    files = {r["image"]: r["file"] for f in seg.glob("shard-*.parquet") for r in pq.read_table(f).to_pylist()}
    assert files["../../escaped/evil.png"] in hashed and files["ok.png"] == "ok.png"  # the row names its PNG


def test_wds_texts_from_members(wds, tmp_path, capsys):
    """Texts from KEY.txt: a non-UTF-8 one is an error row naming its line; a record without
    texts makes the job a one-line error (give --prompts)."""
    _, inp, _ = wds
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        _add(tar, "ok.png", _png(0))
        _add(tar, "ok.txt", b"a red circle\n")
        _add(tar, "bad.png", _png(6))
        _add(tar, "bad.txt", b"a blue square\na blue \xff square\n")
    before = _files(tmp_path)
    assert main(["explain-dataset", "--webdataset", str(tmp_path / "t.tar"), "--out", str(tmp_path / "o"), *FAST]) == 0
    _nothing_outside(tmp_path, before, tmp_path / "o")
    rows, errors, manifest = _job(tmp_path / "o")
    assert rows == {("ok.png", "a red circle")} and "t.tar: bad.txt:2 is not UTF-8 text (byte 0xff)" in errors["bad.png"][0]
    _accounted(manifest, 2)
    capsys.readouterr()
    code, err = _cli(capsys, ["explain-dataset", "--webdataset", inp / "a.tar", "--out", tmp_path / "o2", *FAST])
    assert code == 2 and len(err) == 1 and "have no texts" in err[0]


def test_wds_with_a_pairs_file_is_a_one_line_error(wds, tmp_path, capsys):
    _, inp, _ = wds
    (tmp_path / "pairs.jsonl").write_text('{"image": "ok.png", "texts": ["a red circle"]}\n')
    code, err = _cli(capsys, ["explain-dataset", "--webdataset", inp / "a.tar", "--pairs", tmp_path / "pairs.jsonl",
                              "--out", tmp_path / "o", *FAST])
    assert code == 2 and len(err) == 1 and "--pairs names images under --images" in err[0]


def _cut(src, dst, at):
    dst.write_bytes(src.read_bytes()[:at])


@pytest.mark.parametrize("where", ["header", "data", "end"])
def test_wds_truncated_shard_is_a_one_line_error(tmp_path, capsys, where):
    with tarfile.open(tmp_path / "full.tar", "w") as tar:
        for s in range(3):
            _add(tar, f"s{s}.png", _png(s))
    full = (tmp_path / "full.tar").read_bytes()
    second = full.index(b"s1.png")  # the second member's header
    at = {"header": second + 100, "data": second + 512 + 200, "end": len(full) - 10}[where]
    _cut(tmp_path / "full.tar", tmp_path / "cut.tar", at)
    code, err = _cli(capsys, ["explain-dataset", "--webdataset", tmp_path / "cut.tar", "--prompts",
                              _prompts(tmp_path), "--out", tmp_path / "o", *FAST])
    if where == "end":  # cut inside the end-of-archive zeros: every member is whole
        assert code == 0 and _job(tmp_path / "o")[2]["inputs"]["images"] == 3
    else:
        assert code == 2 and len(err) == 1 and "cut.tar is truncated" in err[0]


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red circle\n")
    return p


# ---------------------------------------------------------------- Hugging Face datasets

@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    keys = ["ok", "../../escaped/evil", None, "dup", "dup", "nulltext", "nullitem", "bomb"]
    texts = [["a red circle"], ["a red circle"], ["a red circle"], ["a red circle"], ["a red circle"], None,
             ["a red circle", None], ["a red circle"]]
    images = [{"bytes": _bomb() if k == "bomb" else _png(i), "path": None} for i, k in enumerate(keys)]
    features = datasets.Features({"image": datasets.Image(), "key": datasets.Value("string"),
                                  "texts": datasets.List(datasets.Value("string")), "n": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": images, "key": keys, "texts": texts, "n": list(range(len(keys)))},
                                    features=features)
    ds.save_to_disk(str(root / "ds"))
    ds.to_parquet(str(root / "ds.parquet"))
    out = root / "deep" / "er" / "out"
    before = _files(root)
    flags = ["--key-column", "key", "--text-column", "texts", *FAST]
    assert main(["explain-dataset", "--hf-dataset", str(root / "ds"), "--out", str(out / "explain"), *flags]) == 0
    (root / "p.txt").write_text("a red circle\n")
    before |= {root / "p.txt"}
    assert main(["segment", "--hf-dataset", str(root / "ds.parquet"), "--key-column", "key", "--prompts",
                 str(root / "p.txt"), "--out", str(out / "segment"), "--no-progress"]) == 0
    _nothing_outside(root, before, out)
    return root, out


HF_CASES = {
    "ok": None,
    "../../escaped/evil": None,
    "<row 2: no key>": "row 2 has no key",
    "dup": "the key 'dup' (--key-column 'key') is on 2 rows (3, 4)",
    "nulltext": "--text-column 'texts' is null",
    "nullitem": "holds a null at item 1 of its list",
    "bomb": "refused before decoding",
}


@pytest.mark.parametrize("record", sorted(HF_CASES))
def test_hf_every_row_is_a_row_or_an_error_row(hf, record):
    _, out = hf
    rows, errors, manifest = _job(out / "explain")
    says = HF_CASES[record]
    if says is None:
        assert {(i, t) for i, t in rows if i == record} == {(record, "a red circle")}
    else:
        assert record in errors and all(says in e for e in errors[record]), errors.get(record)
    assert all(t != "None" for _, t in rows)
    _accounted(manifest, 8)


def test_hf_segment_keeps_keys_inside_out(hf):
    _, out = hf
    seg = out / "segment"
    _, errors, manifest = _job(seg)
    _accounted(manifest, 8)
    labels = sorted(p.relative_to(seg / "labels").as_posix() for p in (seg / "labels").rglob("*.png"))
    assert "ok.png" in labels and any(p.startswith("_keys/evil-") for p in labels)
    assert set(errors) == {"<row 2: no key>", "dup", "bomb"}  # the texts column is not read by segment


@pytest.mark.parametrize("flags,says", [
    (["--text-column", "n"], "--text-column 'n' holds int64 values"),
    (["--text-column", "nope"], "--text-column 'nope' is not a column"),
    (["--image-column", "n", "--text-column", "texts"], None),  # no image in that column: error rows
])
def test_hf_column_types(hf, tmp_path, capsys, flags, says):
    root, _ = hf
    code, err = _cli(capsys, ["explain-dataset", "--hf-dataset", root / "ds", "--out", tmp_path / "o", *flags, *FAST])
    if says is None:
        assert code == 0 and _job(tmp_path / "o")[2]["inputs"]["images_only_in_errors"] == 8
    else:
        assert code == 2 and len(err) == 1 and says in err[0]


def test_hf_label_column_of_strings_is_refused(hf):
    from captum_gradeclip.scale.sources import SourceConfig, labelled_source

    root, _ = hf
    with pytest.raises(InputError, match="--label-column 'key' holds string values"):
        labelled_source(SourceConfig(hf_dataset=str(root / "ds"), label_column="key"))


# ---------------------------------------------------------------- keys as file names

HOSTILE_KEYS = ["../../escaped/evil", "/etc/passwd", "a/../../b", "a\x00b", "a\\..\\b", "C:\\x", BAD_NAME, "",
                ".", "..", "_keys/x", "_KEYS/x", "a//b", "a/", " a", "x" * 300, "con:1", "tab\there", "ok/name.png"]


@pytest.mark.parametrize("suffix", ["", ".png"])
def test_safe_relative_names_stay_inside_and_never_collide(tmp_path, suffix):
    from captum_gradeclip._io import inside, safe_names, safe_relative_name

    names = safe_names(HOSTILE_KEYS + ["a.jpg", "a.png"], suffix)
    assert len(set(names.values())) == len(names) == len(HOSTILE_KEYS) + 2
    for key, name in names.items():
        assert inside(tmp_path, name) is not None and inside(tmp_path, name) != tmp_path.resolve(), (key, name)
        assert name.encode("utf-8") and "\\" not in name and "\x00" not in name and ".." not in name.split("/")
    assert safe_relative_name("ok/name.png", suffix) == "ok/name.png"
    assert safe_relative_name("cat/1.jpg", ".png") == "cat/1.png" and safe_relative_name("cat/1.jpg") == "cat/1.jpg"


def test_save_labels_refuses_a_raw_key(tmp_path):
    import torch

    from captum_gradeclip.segment.job import save_labels

    with pytest.raises(InputError, match="leaves"):
        save_labels(torch.zeros(4, 4, dtype=torch.long), torch.zeros(3, 4, 4, dtype=torch.uint8),
                    "../../escaped.png", tmp_path / "out")
    assert not (tmp_path / "escaped.png").exists()


# ---------------------------------------------------------------- the app

@pytest.fixture(scope="module")
def app_image():
    gr = pytest.importorskip("gradio")
    from captum_gradeclip.app import ui

    return ui._as_file(gr.Image(type="filepath"))


def _upload(app_image, path):
    from gradio.data_classes import ImageData

    return app_image.preprocess(ImageData(path=str(path), orig_name=Path(path).name))


@pytest.mark.parametrize("case,says", [("bomb", "13000 x 13000 px"), ("junk", "cannot read the upload"),
                                       ("empty", "cannot read the upload"), ("ok", None)])
def test_app_upload_is_checked_from_its_header(app_image, tmp_path, case, says):
    from captum_gradeclip.app.explore import AppInputError
    from captum_gradeclip.app.ui import read_upload

    p = tmp_path / f"{case}.png"
    p.write_bytes({"bomb": _bomb(), "junk": b"\x89PNG not really", "empty": b"", "ok": _png(0)}[case])
    path = _upload(app_image, p)
    assert path == str(p)  # handed over as a file: Gradio decoded nothing
    if says is None:
        assert read_upload(path)[0].size == (64, 64)
    else:
        with pytest.raises(AppInputError, match=says):
            read_upload(path)


@pytest.mark.parametrize("prompt,caption", [("a red circle " * 800, ""), ("a red circle", "a blue square " * 100)])
def test_app_long_prompts_get_a_message(tmp_path, prompt, caption):
    from captum_gradeclip.app.ui import run_explain
    from captum_gradeclip.models import load

    (tmp_path / "s.png").write_bytes(_png(0))
    out = run_explain(load(None, None), None, str(tmp_path / "s.png"), prompt, caption, ["Grad-ECLIP"], "-1",
                      "cosine", True)
    assert out[0].startswith("**Cannot explain:**") and "characters: give prompts and captions under 1000" in out[0]
    assert out[1:] == ("", "", None, None, None)


def test_app_request_folders_are_bounded(tmp_path):
    from captum_gradeclip.app.ui import TempFolders

    folders = TempFolders(keep=3, prefix="gce-test-")
    made = [folders.new() for _ in range(5)]
    assert [p.exists() for p in made] == [False, False, True, True, True]
    folders.clear()
    assert not any(p.exists() for p in made)


# ---------------------------------------------------------------- templates and the report

@pytest.mark.parametrize("template,ok", [("a {} and a {}", False), ("{x} {}", False), ("{0}", False), ("{:>9}", False),
                                         ("a {", False), ("no field", False), ("a {!r}", False), ("a {}", True),
                                         ("{{literal}} {}", True)])
def test_templates_are_checked_before_work(template, ok):
    from captum_gradeclip.scale.data import check_template

    if ok:
        check_template(template, "--templates")
        template.format("x")
    else:
        with pytest.raises(InputError, match="--templates"):
            check_template(template, "--templates")


def test_report_of_a_hostile_job_keeps_to_its_folders(wds, tmp_path, capsys):
    root, inp, out = wds
    before = _files(root)
    code, err = _cli(capsys, ["report", out / "explain", "--images", inp])
    assert code == 0
    _nothing_outside(root, before, out / "explain")
    doc = (out / "explain" / "report.html").read_text()
    assert "complete: every shard the manifest lists is here and intact" in doc and "bomb.png" in doc
    code, err = _cli(capsys, ["report", out / "explain" / "manifest.json"])
    assert code == 2 and len(err) == 1 and "is a file" in err[0]



def test_segment_masks_are_read_only_inside_masks(tmp_path):
    """With --masks: a key with ``..`` reads no mask outside --masks (its mask there is a trap:
    the right size, all foreground), and a mask declaring 13000 x 13000 px is refused undecoded."""
    from PIL import Image

    masks = tmp_path / "in" / "masks"
    masks.mkdir(parents=True)
    Image.new("L", (64, 64), 0).save(masks / "ok.png")
    (masks / "bomb.png").write_bytes(_bomb())
    Image.new("L", (64, 64), 1).save(tmp_path / "in" / "evil.png")  # masks/../evil.png
    with tarfile.open(tmp_path / "in" / "s.tar", "w") as tar:
        for name in ("ok.png", "bomb.png", "../evil.png"):
            _add(tar, name, _png(0))
    (tmp_path / "in" / "p.txt").write_text("a red circle\n")
    out = tmp_path / "out"
    before = _files(tmp_path)
    assert main(["segment", "--webdataset", str(tmp_path / "in" / "s.tar"), "--prompts", str(tmp_path / "in" / "p.txt"),
                 "--masks", str(masks), "--out", str(out), "--no-progress"]) == 0
    _nothing_outside(tmp_path, before, out)
    rows, errors, manifest = _job(out)
    assert {i for i, _ in rows} == {"ok.png"} and manifest["inputs"]["images"] == 3
    assert "would lie outside --masks" in errors["../evil.png"][0]
    assert "13000 x 13000 px" in errors["bomb.png"][0] and "refused before decoding" in errors["bomb.png"][0]
