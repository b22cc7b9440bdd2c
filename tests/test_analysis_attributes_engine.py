"""analyze attributes --engine: the probes' maps as two dataset-engine jobs (Grad-ECLIP, GAME) give
the rows of the direct computation (maps stored as float16: equal up to that rounding), GAME's
columns included; run again, the finished jobs are read, not recomputed."""

from __future__ import annotations

import json

import pytest


def _rows(path):
    import pyarrow.parquet as pq

    return {r["probe_id"]: r for r in pq.read_table(path).to_pylist()}


def test_engine_rows_equal_direct_rows(tmp_path):
    from captum_gradeclip.cli import main

    common = ["analyze", "attributes", "--scenes", "3", "--examples", "1"]
    assert main([*common, "--out", str(tmp_path / "direct")]) == 0
    assert main([*common, "--engine", "--shard-size", "2", "--out", str(tmp_path / "engine")]) == 0
    a, b = _rows(tmp_path / "direct" / "rows.parquet"), _rows(tmp_path / "engine" / "rows.parquet")
    assert sorted(a) == sorted(b) and len(a) == 18  # 3 scenes x 5 probes + 3 binding scenes
    flips = 0
    for k, ra in a.items():
        rb = b[k]
        assert rb["correct"] == ra["correct"] and rb["score"] == pytest.approx(ra["score"], abs=2e-3), k
        for m in ("grad_eclip", "game"):
            for col in ("energy", "best_object_energy", "share_colour"):
                if ra[f"{m}_{col}"] is not None:
                    assert rb[f"{m}_{col}"] == pytest.approx(ra[f"{m}_{col}"], abs=5e-3), (k, m, col)
            flips += ra[f"{m}_pointing"] != rb[f"{m}_pointing"]
    assert flips <= 1  # a float16 tie may move a maximum by one patch, at most once here
    assert all(r["game_energy"] is not None for r in b.values() if r["category"] != "absent")
    jobs = tmp_path / "engine" / "maps"
    assert {p.name for p in jobs.iterdir()} == {"grad-eclip", "game"}
    assert len(list((jobs / "game").glob("shard-*.parquet"))) == 3  # 6 images, 2 per shard
    stamp = {p: p.stat().st_mtime_ns for p in jobs.glob("*/shard-*.parquet")}
    assert main([*common, "--engine", "--shard-size", "2", "--out", str(tmp_path / "engine")]) == 0
    assert {p: p.stat().st_mtime_ns for p in jobs.glob("*/shard-*.parquet")} == stamp  # resumed: nothing redone
    s = json.loads((tmp_path / "engine" / "summary.json").read_text())
    assert s["maps"].endswith("maps") and s["categories"]["binding"]["game"]["pointing"] is not None


def test_engine_under_torchrun_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    from captum_gradeclip.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["analyze", "attributes", "--scenes", "1", "--engine", "--out", str(tmp_path / "o")]) == 2
    assert "--engine runs in one process for now" in capsys.readouterr().err.strip().splitlines()[-1]
