"""ARCHITECTURE.md's "an application (a command over the engine)", done once: a toy command
written in ONE module (here, this file) on the public seams only (models.load, a batch explainer
on ``BaseBatchExplainer``, a ``JobSpec`` run by ``run_job``, the work lists), registered with one
add_parser(sub) line in cli._parser (simulated below). The package's own dataset jobs
(explain-dataset, segment, the folder benchmark, the authors' protocol) stand on the same seam:
each builds one JobSpec and hands it to the engine's one entry point, and none wires the engine
(session, prepared, run) by hand."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyarrow")

from scale_helpers import make_folder  # noqa: E402

from captum_gradeclip import cli  # noqa: E402
from captum_gradeclip.scale import BaseBatchExplainer  # noqa: E402


class _ScoreExplainer(BaseBatchExplainer):
    """A batch explainer: ``(pixels (N, 3, H, W), texts: N lists) -> N lists of rows`` holding each
    pair's cosine similarity; it declares only what differs from the defaults."""

    def __init__(self, clip) -> None:
        self.clip = clip

    def config(self):
        return {"application": "toy-scores"}

    def __call__(self, pixels, texts):
        rows = []
        for px, ts in zip(pixels, texts):
            with torch.no_grad():
                s = self.clip.image_similarity(*self.clip.tokens(list(ts)))(px[None])[0]
            rows.append([{"text": t, "score": float(v)} for t, v in zip(ts, s)])
        return rows

    def to_table(self, rows):
        import pyarrow as pa

        return pa.table({c: [r[c] for r in rows] for c in ("image", "text", "score")})


def _cmd(args: argparse.Namespace) -> None:
    from captum_gradeclip.scale.data import ImageFolderDataset, prompt_items, read_prompts
    from captum_gradeclip.scale.engine import JobSpec, run_job

    items = prompt_items(Path(args.images), read_prompts(args.prompts))

    def load(device):
        from captum_gradeclip.models import load as load_model

        clip = load_model(args.model)
        return ImageFolderDataset(Path(args.images), items, clip.pixels), _ScoreExplainer(clip)

    run_job(JobSpec(Path(args.out_dir), {"application": "toy-scores", "prompts": args.prompts}, len(items), load,
                    num_workers=0, progress=False, device="cpu"))


def add_parser(sub) -> None:
    p = sub.add_parser("toy-scores", help="the cosine of every (image, prompt) pair of a folder")
    p.add_argument("images")
    p.add_argument("--prompts", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_cmd)


def test_a_toy_command_over_the_engine(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from captum_gradeclip.models import load_shapes
    from captum_gradeclip.shapes import render_scene

    parser = cli._parser

    def with_toy():  # the one line an application adds to cli._parser: add_parser(sub)
        ap = parser()
        add_parser(next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)))
        return ap

    monkeypatch.setattr(cli, "_parser", with_toy)
    images, prompts = make_folder(tmp_path, n=2)
    out = tmp_path / "out"
    assert cli.main(["toy-scores", str(images), "--prompts", str(prompts), "--out-dir", str(out)]) == 0
    rows = [r for f in sorted(out.glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 2 * 3 and {r["text"] for r in rows} == {"a red circle", "a blue square", "a green triangle"}
    clip = load_shapes()  # each row is the model's own score of its pair
    r = next(r for r in rows if r["image"] == "scene1.png" and r["text"] == "a blue square")
    with torch.no_grad():
        want = clip.image_similarity(*clip.tokens(["a blue square"]))(clip.pixels([render_scene(seed=1).image]))
    assert abs(r["score"] - float(want[0, 0])) < 1e-5


def _tree(root: Path) -> Path:
    from captum_gradeclip.shapes.scenes import ShapeSpec, render_scene

    for k, (colour, shape) in enumerate([("red", "circle"), ("blue", "square")]):
        (root / f"{colour}_{shape}").mkdir(parents=True)
        render_scene([ShapeSpec(colour, shape, (0.45, 0.55), 0.5)], seed=k).image.save(root / f"{colour}_{shape}" / "0.png")
    return root


def _argv(kind: str, tmp: Path) -> list:
    images, prompts = make_folder(tmp, n=2)
    flat = tmp / "flat"
    flat.mkdir()
    for f in sorted(images.glob("*.png")):
        (flat / f.name).write_bytes(f.read_bytes())
    out = str(tmp / "out")
    return {"explain-dataset": ["explain-dataset", "--images", str(images), "--prompts", str(prompts), "--out", out,
                                "--workers", "0", "--no-progress"],
            "segment": ["segment", "--images", str(flat), "--prompts", str(prompts), "--out", out, "--no-progress"],
            "folder benchmark": ["benchmark", "--images", str(flat), "--prompts", str(prompts), "--step", "0.5",
                                 "--methods", "grad-eclip", "--out-dir", out, "--no-memory"],
            "authors' protocol": ["benchmark", "--protocol", "grad-eclip", "--images", str(_tree(tmp / "tree")),
                                  "--templates", "{}", "--methods", "grad-eclip", "--out-dir", out]}[kind]


@pytest.mark.parametrize("kind", ["explain-dataset", "segment", "folder benchmark", "authors' protocol"])
def test_every_dataset_job_is_one_job_spec_run_by_run_job(kind, tmp_path, monkeypatch):
    """Each command hands the engine one JobSpec (its out folder, configuration and size), and
    the engine's run_job is what writes the folder."""
    from captum_gradeclip.scale import JobSpec, RunSummary, engine

    specs, summaries = [], []
    real = engine.run_job

    def spy(spec):
        specs.append(spec)
        summaries.append(real(spec))
        return summaries[-1]

    monkeypatch.setattr(engine, "run_job", spy)
    assert cli.main(_argv(kind, tmp_path)) == 0
    assert len(specs) == 1 and isinstance(specs[0], JobSpec) and isinstance(summaries[0], RunSummary)
    assert (Path(specs[0].out) / "manifest.json").is_file() and summaries[0].images == specs[0].n_items
    assert summaries[0].pairs > 0


def test_no_job_wires_the_engine_by_hand():
    """Only the engine itself uses its parts (prepared, start, run, distributed sessions): every
    other module reaches it through run_job / explain_dataset."""
    root = Path(__file__).resolve().parents[1] / "captum_gradeclip"
    parts = {"prepared", "start", "run", "job_config"}
    offenders = []
    for f in sorted(root.rglob("*.py")):
        if f.relative_to(root).as_posix() == "scale/engine.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("engine"):
                offenders += [f"{f.relative_to(root)}: {a.name}" for a in node.names if a.name in parts]
    assert offenders == []
