"""``captum-gradeclip report``: what it keeps of a job (the caps), that the maps it draws are the
job's, and its errors and totals; on a real explain-dataset job and on a folder benchmark's
OUT_DIR written with the benchmark's own table and store functions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyarrow")

from scale_helpers import make_folder  # noqa: E402

from captum_gradeclip.app.collect import ReportCaps, read_job  # noqa: E402
from captum_gradeclip.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A 7-image job with 3 prompts (21 rows) and 2 unreadable images, and its image folder."""
    root = tmp_path_factory.mktemp("report")
    images, prompts = make_folder(root, n=7, bad=True)
    out = root / "job"
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", str(out),
                 "--workers", "0", "--no-progress", "--batch-size", "4", "--shard-size", "3"]) == 0
    return out, images


def parquet_rows(out: Path):
    from captum_gradeclip.scale import read_maps

    return list(read_maps(out))


def test_caps_keep_each_texts_best_and_worst_and_a_seeded_sample(job):
    out, _ = job
    rows = parquet_rows(out)
    caps = ReportCaps(best=1, sample=2, seed=3)
    got = read_job(out, caps)
    want = set()
    for text in {r["text"] for r in rows}:
        mine = [r for r in rows if r["text"] == text]
        hi, lo = max(mine, key=lambda r: r["score"]), min(mine, key=lambda r: r["score"])
        assert got.best[text][0].values["image"] == hi["image"]
        assert got.worst[text][0].values["image"] == lo["image"]
        want |= {(hi["image"], text), (lo["image"], text)}
    kept = {(r.values["image"], r.values["text"]) for r in got.rows}
    assert want <= kept and len(kept) <= len(want) + 2 and sum("sample" in r.why for r in got.rows) == 2
    assert [r.values["image"] for r in read_job(out, caps).rows] == [r.values["image"] for r in got.rows]
    assert got.totals == {"rows": 21, "images": 7, "texts": 3, "errors": 2, "shards": 3, "rows shown": len(kept)}


def test_the_maps_drawn_are_the_jobs(job):
    out, _ = job
    by_pair = {(r["image"], r["text"]): r["map"] for r in parquet_rows(out)}
    got = read_job(out, ReportCaps(best=2, sample=5))
    for r in got.rows:
        assert torch.equal(r.map, by_pair[(r.values["image"], r.values["text"])])


def test_report_html_holds_its_rows_errors_and_configuration(job, tmp_path):
    out, images = job
    html_path = tmp_path / "r.html"
    assert main(["report", str(out), "--images", str(images), "--html", str(html_path), "--best", "2",
                 "--sample", "4"]) == 0
    doc = html_path.read_text()
    shown = read_job(out, ReportCaps(best=2, sample=4)).totals["rows shown"]
    assert doc.count('<img class="overlay"') == shown and doc.count('<img class="thumb"') == shown
    assert doc.count('<img class="extreme"') == 3 * 2 * 2
    assert "empty.png" in doc and "broken.jpg" in doc and "21 rows" in doc
    assert "http://" not in doc and "https://" not in doc  # self-contained
    config = json.loads(re.search(r"<pre id='config'>(.*?)</pre>", doc, re.S).group(1).replace("&quot;", '"'))
    assert config["totals"]["rows"] == 21


def test_report_of_a_folder_benchmark(tmp_path):
    from captum_gradeclip.benchmark.folder import FaithfulnessExplainer
    from captum_gradeclip.scale.store import write_shard
    from captum_gradeclip.shapes import render_scene

    out = tmp_path / "bench"
    for sub in ("errors", "sums"):  # the folders the engine makes before its first shard
        (out / "curves" / sub).mkdir(parents=True)
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i, auc in enumerate([0.1, 0.5, 0.3]):
        render_scene(seed=i).image.save(images / f"s{i}.png")
        for m, bonus in (("Grad-ECLIP", 0.2), ("CLS attention", 0.0)):
            curve = torch.linspace(1, 0, 5)
            rows.append({"image": f"s{i}.png", "method": m, "text": "a red circle", "target": 0, "score": 0.3,
                         "seconds": 0.01, "deletion_auc": 0.2, "insertion_auc": auc + bonus, "deletion_acc_auc": 0.5,
                         "insertion_acc_auc": 0.5, "deletion": curve, "insertion": curve,
                         "deletion_accuracy": curve, "insertion_accuracy": curve})
    inputs = {"images": 4, "images_with_rows": 3, "images_only_in_errors": 1, "texts": None, "rows": len(rows),
              "text_errors": None}  # what the engine records per shard (scale.store.INPUT_COUNTS)
    write_shard(out / "curves", 0, FaithfulnessExplainer.to_table(rows), [{"image": "bad.png", "error": "truncated"}],
                inputs)
    (out / "benchmark.json").write_text(json.dumps({"image": {"Grad-ECLIP": {"insertion_auc": 0.5}}}))
    job = read_job(out, ReportCaps(best=1, sample=0))
    assert job.kind == "benchmark" and job.group == "method"
    assert job.best["Grad-ECLIP"][0].values["image"] == "s1.png" and job.worst["CLS attention"][0].values["image"] == "s0.png"
    assert main(["report", str(out), "--images", str(images)]) == 0
    doc = (out / "report.html").read_text()
    assert doc.count('<img class="thumb"') == 6 and "truncated" in doc and "Averages per method" in doc


def test_report_errors(job, tmp_path, capsys):
    out, _ = job
    for argv, says in ((["report", str(tmp_path)], "neither an explain-dataset output"),
                       (["report", str(tmp_path / "none")], "no such folder"),
                       (["report", str(out), "--html", str(tmp_path / "r.png")], ".html"),
                       (["report", str(out), "--images", str(tmp_path / "none")], "--images"),
                       (["report", str(out), "--best", "-1"], "--best")):
        assert main(argv) == 2
        assert says in capsys.readouterr().err


def _copy(out, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def _rewrite(shard, **columns):
    """``shard`` rewritten as valid Parquet with ``columns`` replaced (a forged shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(shard)
    for name, fill in columns.items():
        t = t.set_column(t.schema.get_field_index(name), name, pa.array([fill(v) for v in t.column(name).to_pylist()],
                                                                       t.schema.field(name).type))
    pq.write_table(t, shard)


def test_a_forged_shard_is_left_out_and_said(job, tmp_path):
    out = _copy(job[0], tmp_path)
    _rewrite(out / "shard-00001.parquet", score=lambda v: 0.99)
    got = read_job(out)
    assert got.totals["shards"] == 2 and all(r.values["score"] != 0.99 for r in got.rows)
    assert any("shard-00001.parquet left out" in s and "sha256" in s for s in got.status)
    assert any(s.startswith("incomplete: 2 of 3 shards") for s in got.status)
    assert "checked against the manifest" in got.checked
    assert main(["report", str(out)]) == 0
    status = re.search(r"<ul id='status'.*?</ul>", (out / "report.html").read_text(), re.S).group(0)
    assert "shard-00001.parquet left out" in status


def test_a_deleted_shard_and_a_missing_manifest_are_said(job, tmp_path):
    import pyarrow.parquet as pq

    out = _copy(job[0], tmp_path)
    rows = pq.ParquetFile(out / "shard-00002.parquet").metadata.num_rows
    (out / "shard-00002.parquet").unlink()
    assert read_job(out).status == [f"incomplete: 2 of 3 shards, {21 - rows} of 21 rows (the manifest lists more: "
                                    "shards deleted or damaged)"]
    (out / "manifest.json").unlink()
    got = read_job(out)
    assert got.status[0].startswith(f"no manifest: interrupted or running; 2 of 3 shards written, {21 - rows} rows")
    assert "the sums written with each shard" in got.checked
    assert main(["report", str(out)]) == 0 and "no manifest: interrupted or running" in (out / "report.html").read_text()


def test_a_finished_job_says_complete(job):
    got = read_job(job[0])
    assert got.status == [] and "sha256 of all 3 shard(s) shown checked against the manifest" == got.checked


def test_report_of_a_file_says_give_the_folder(job, capsys):
    out, _ = job
    assert main(["report", str(out / "manifest.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json is a file: give the job's folder" in err[0]


def test_image_keys_resolve_only_inside_images(job, tmp_path):
    """A key with ``..`` (forged into a shard) and a link out of --images draw no thumbnail."""
    import json as _json

    from PIL import Image

    from captum_gradeclip.scale.store import sha256_file

    out, images = job
    out = _copy(out, tmp_path)
    img = tmp_path / "imgs"
    __import__("shutil").copytree(images, img)
    (tmp_path / "outside").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "outside" / "x.png")
    (img / "link.png").symlink_to(tmp_path / "outside" / "x.png")
    keys = iter(["../outside/x.png", str(tmp_path / "outside" / "x.png"), "link.png"] * 10)
    _rewrite(out / "shard-00000.parquet", image=lambda v: next(keys))
    sums = out / "sums" / "shard-00000.json"
    sums.write_text(_json.dumps({**_json.loads(sums.read_text()), "sha256": sha256_file(out / "shard-00000.parquet")}))
    (out / "manifest.json").unlink()
    n0 = __import__("pyarrow.parquet").parquet.ParquetFile(out / "shard-00000.parquet").metadata.num_rows
    assert main(["report", str(out), "--images", str(img), "--sample", "50"]) == 0
    doc = (out / "report.html").read_text()
    rows = re.findall(r'<tr data-search="(.*?)">(.*?)</tr>', doc, re.S)
    forged = [cells for search, cells in rows if "outside" in search or search.startswith("link.png")]
    assert len(forged) == n0 >= 3 and all(cells.startswith("<td></td>") for cells in forged)
    assert sum(cells.startswith('<td><img class="thumb"') for _, cells in rows) == len(rows) - n0 > 0
