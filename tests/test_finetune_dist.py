"""``captum-gradeclip finetune`` under torchrun: 2 processes (gloo, CPU) against 1 with the same
global batch (full fine-tuning, and LoRA with WiSE); the command's metrics file with ablations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _two_then_one(common, tmp_path):
    """``finetune common`` on 2 torchrun processes into ``tmp_path/two``, then in this process into ``one``."""
    from captum_gradeclip.cli import main

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "captum_gradeclip.cli", *common, "--out", str(tmp_path / "two")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0


def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(tmp_path):
    from captum_gradeclip.cli import main
    from captum_gradeclip.shapes.model import WEIGHTS_DIR

    common = ["finetune", "--steps", "3", "--batch", "8", "--eval-scenes", "0", "--threads", "1", "--wise", "1"]
    _two_then_one(common, tmp_path)
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    init = _weights(WEIGHTS_DIR)
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    # k_proj biases have an exactly-zero gradient (softmax is shift-invariant): Adam turns their
    # floating-point noise into steps of either sign, so they are compared through the function below
    def gap(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in a if not k.endswith("k_proj.bias"))

    # Adam divides by the gradient's running scale, so float noise in a near-zero gradient becomes
    # a step of up to lr (1e-4) per step: measured gaps 2.3e-6 (torch 2.13) and 1.0e-5 (2.14.1).
    # The control: one process with half the global batch (other data) is far further away.
    assert main(common[:3] + ["--batch", "4"] + common[5:] + ["--out", str(tmp_path / "half")]) == 0
    diff, control = gap(one, two), gap(one, _weights(tmp_path / "half"))
    assert moved > 1e-4 and diff < 5e-5 < control, (moved, diff, control)
    from transformers import CLIPModel

    from captum_gradeclip.finetune import dense_features

    px = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = dense_features(CLIPModel.from_pretrained(tmp_path / "one"), px)
    b = dense_features(CLIPModel.from_pretrained(tmp_path / "two"), px)
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a, b))


def test_metrics_file_has_before_after_and_ablations(tmp_path):
    from captum_gradeclip.cli import main

    out = tmp_path / "run"
    args = ["finetune", "--out", str(out), "--steps", "1", "--batch", "4", "--eval-scenes", "6", "--threads", "1",
            "--ablations"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"region_accuracy", "segmentation_miou", "recognition", "pointing_game"}
    assert keys <= set(metrics["before"]) and keys <= set(metrics["after"])
    assert set(metrics["ablations"]) == {"oracle_gt_masks", "uniform_masks", "game_maps"}
    assert all(0 <= metrics["after"][k] <= 1 for k in keys)
    from captum_gradeclip.shapes import load_shapes_clip

    model, processor = load_shapes_clip(out)  # save_pretrained'ed: model and processor
    assert processor(text=["a red circle"], return_tensors="pt").input_ids.shape[0] == 1


def test_two_processes_give_the_weights_of_one_with_lora_and_wise(tmp_path):
    pytest.importorskip("peft")
    from captum_gradeclip.cli import main
    from captum_gradeclip.shapes.model import WEIGHTS_DIR

    common = ["finetune", "--steps", "3", "--batch", "8", "--eval-scenes", "0", "--threads", "1", "--lora", "4",
              "--lr", "1e-3", "--wise", "0.5"]
    _two_then_one(common, tmp_path)
    assert main(common[:3] + ["--batch", "4"] + common[5:] + ["--out", str(tmp_path / "half")]) == 0
    one, two, half = (_weights(tmp_path / n) for n in ("one", "two", "half"))
    init = _weights(WEIGHTS_DIR)
    assert set(one) == set(init)  # merged: the plain model's tensors, no adapter left
    changed = [k for k in one if not torch.equal(one[k], init[k])]
    assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "out_proj") for k in changed)

    def gap(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in changed)

    moved, diff, control = gap(one, init), gap(one, two), gap(one, half)
    assert moved > 1e-4 and diff < 5e-5 < control, (moved, diff, control)
