"""ARCHITECTURE.md's "an application (a command over the engine)", done once: a toy command
written in ONE module (here, this file) on the public seams only (models.load, the dataset engine,
the work lists), registered with one add_parser(sub) line in cli._parser (simulated below)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

pytest.importorskip("pyarrow")

from scale_helpers import make_folder  # noqa: E402

from captum_gradeclip import cli  # noqa: E402


class _ScoreExplainer:
    """A batch explainer: ``(pixels (N, 3, H, W), texts: N lists) -> N lists of rows`` holding each
    pair's cosine similarity."""

    splits_texts = False

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

    @staticmethod
    def to_table(rows):
        import pyarrow as pa

        return pa.table({c: [r[c] for r in rows] for c in ("image", "text", "score")})


def _cmd(args: argparse.Namespace) -> None:
    from captum_gradeclip.models import load
    from captum_gradeclip.scale.data import ImageFolderDataset, prompt_items, read_prompts
    from captum_gradeclip.scale.engine import explain_dataset

    clip = load(args.model)
    items = prompt_items(Path(args.images), read_prompts(args.prompts))
    explain_dataset(ImageFolderDataset(Path(args.images), items, clip.pixels), _ScoreExplainer(clip), args.out_dir,
                    num_workers=0, progress=False, device="cpu")


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
