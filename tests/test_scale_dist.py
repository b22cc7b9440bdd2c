"""The dataset engine on torchrun's processes (gloo, CPU): the same rows as one process, and a
run killed with SIGKILL mid-way finishes on rerun with every pair once and the same maps.

torchrun is ``python -m torch.distributed.run`` of this interpreter; all the multi-process runs
of this file take about half a minute on 2 cores.

"The same" is to float32 rounding, not bit for bit: torchrun gives each process one thread
(``OMP_NUM_THREADS=1``) where the single process has the machine's, and a thread split adds the
same terms in another order (a benchmark AUC differed at 4e-9 on an AVX2 machine). Scores, maps and
AUCs are compared at ``conftest.float32_tolerance`` of their scale (derived there) for ShapesCLIP's
longest dot product (its 512-wide MLP); maps stored as float16 may also round to the neighbouring
float16, so one float16 spacing is allowed on top.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHAPES_REDUCTION, float32_tolerance

pytest.importorskip("pyarrow")

from scale_helpers import assert_same_rows, make_folder, rows_by_pair  # noqa: E402

from captum_gradeclip.cli import main  # noqa: E402

JOB = ["--workers", "0", "--no-progress", "--batch-size", "2", "--shard-size", "2"]


def _torchrun(images: Path, prompts: Path, out: Path, kill: str = "", **env: str) -> subprocess.CompletedProcess:
    """``kill="RANK:N"``: through the engine's fault seam (tests/scale_fault.py), rank RANK
    SIGKILLs itself after writing N shards."""
    entry = [str(Path(__file__).with_name("scale_fault.py")), "kill", kill] if kill else ["-m", "captum_gradeclip"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *entry, "explain-dataset", "--images", str(images), "--prompts", str(prompts),
           "--out", str(out), *JOB]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A folder of 9 images (with a corrupt one) and its rows from one uninterrupted process."""
    root = tmp_path_factory.mktemp("scale_dist")
    images, prompts = make_folder(root, n=8, bad=False)
    (images / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out",
                 str(root / "one"), *JOB]) == 0
    return images, prompts, root, rows_by_pair(root / "one")


def _same_numbers(a, b, tol: float) -> bool:
    """Nested dicts / lists equal, their floats to ``tol``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_numbers(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same_numbers(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


def _failure(r: subprocess.CompletedProcess) -> str:
    """The ranks' own messages (before torchrun's summary) and the summary."""
    return r.stderr[:4000] + "\n...\n" + r.stderr[-2000:]


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_two_processes_give_the_rows_of_one(job):
    images, prompts, root, one = job
    r = _torchrun(images, prompts, root / "two")
    assert r.returncode == 0, _failure(r)
    assert len(one) == 8 * 3
    assert_same_rows(rows_by_pair(root / "two"), one)  # same pairs, scores and maps
    two, single = _manifest(root / "two"), _manifest(root / "one")
    assert two["world_size"] == 2 and two["totals"] == single["totals"] == {"shards": 5, "rows": 24, "errors": 1}
    assert (root / "two" / "errors.jsonl").read_text() == (root / "one" / "errors.jsonl").read_text()
    assert sorted(p.name for p in (root / "two" / "logs").iterdir()) == ["rank-0.log", "rank-1.log"]


def test_killed_run_resumes_with_every_pair_once(job):
    images, prompts, root, one = job
    out = root / "killed"
    r = _torchrun(images, prompts, out, kill="1:1")  # rank 1 SIGKILLs itself after 1 shard
    assert r.returncode != 0
    assert not (out / "manifest.json").exists()
    done = sorted(p.name for p in out.glob("shard-*.parquet"))
    assert "shard-00001.parquet" in done and "shard-00003.parquet" not in done  # rank 1's 2nd shard
    kept = {name: (out / name).read_bytes() for name in done}
    r = _torchrun(images, prompts, out)
    assert r.returncode == 0, _failure(r)
    assert f"{len(done)} shard(s) already done" in r.stderr
    assert_same_rows(rows_by_pair(out), one)  # every pair exactly once, the same maps
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    assert not list(out.glob(".*tmp*")) and _manifest(out)["totals"]["rows"] == 24


def test_folder_benchmark_on_two_processes_reports_what_one_does(job):
    import pyarrow.parquet as pq
    import torch

    images, prompts, root, _ = job
    flat = root / "flat"  # the folder benchmark reads the top level only
    flat.mkdir()
    for f in sorted(images.glob("*.png"))[:4] + [images / "sub" / "broken.png"]:
        (flat / f.name).write_bytes(f.read_bytes())
    bench = ["benchmark", "--images", str(flat), "--prompts", str(prompts), "--step", "0.25", "--batch", "2",
             "--methods", "grad-eclip", "cls-attention"]
    assert main([*bench, "--out-dir", str(root / "bench1")]) == 0
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "captum_gradeclip", *bench, "--out-dir", str(root / "bench2")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, _failure(r)
    one, two = (json.loads((root / d / "benchmark.json").read_text()) for d in ("bench1", "bench2"))
    for res in (one, two):
        for m in res["image"].values():
            assert m.pop("ms_per_explanation") > 0
    # AUCs and scores are means of cosines (scale 1)
    assert _same_numbers(one["image"], two["image"], float32_tolerance(1.0, SHAPES_REDUCTION)), (one, two)
    assert one["images"] == two["images"] == 4  # broken.png skipped
    assert one["skipped"] == two["skipped"] == ["broken.png"]
    rows = pq.read_table(root / "bench2" / "curves" / "shard-00000.parquet").to_pydict()
    assert len(rows["image"]) == 4 * 2
    fractions = torch.linspace(0, 1, len(rows["deletion"][0]))
    for curve, auc in zip(rows["deletion"], rows["deletion_auc"]):  # the stored curves give the AUCs
        assert torch.trapezoid(torch.tensor(curve), fractions).item() == pytest.approx(auc, abs=1e-6)
