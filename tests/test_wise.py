"""WiSE-FT (captum_gradeclip.finetune.wise): alpha = 0 is the base model, 1 the tuned one, the
formula in between; alpha outside [0, 1] and mismatched architectures refused; the ``wise``
command; ``finetune --wise`` after a (resumed) run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_clip

from captum_gradeclip.errors import InputError
from captum_gradeclip.finetune import FinetuneConfig, ShapesSource, finetune
from captum_gradeclip.finetune.wise import interpolate_state, wise
from captum_gradeclip.shapes import load_shapes_clip


def _outputs(model, px, ids):
    from captum_gradeclip.forward import features

    with torch.no_grad():
        return (features(model.get_image_features(pixel_values=px)), features(model.get_text_features(input_ids=ids)))


@pytest.fixture
def pair():
    return tiny_clip(seed=0), tiny_clip(seed=1)


def test_alpha_zero_is_the_base_model_and_one_the_tuned(pair):
    base, tuned = pair
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 2]])
    for alpha, ref in ((0.0, base), (1.0, tuned)):
        got, want = _outputs(wise(base, tuned, alpha), px, ids), _outputs(ref, px, ids)
        assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want)), alpha
    half = _outputs(wise(base, tuned, 0.5), px, ids)
    assert not torch.allclose(half[0], _outputs(base, px, ids)[0], atol=1e-3)  # in between: neither end
    assert not torch.allclose(half[0], _outputs(tuned, px, ids)[0], atol=1e-3)


def test_the_formula_over_float_tensors_and_the_others_copied_from_tuned(pair):
    base, tuned = pair
    b, t = base.state_dict(), tuned.state_dict()
    # an integer buffer (e.g. a step counter; transformers 5 keeps position_ids out of the state dict)
    b, t = {**b, "steps": torch.tensor([3])}, {**t, "steps": torch.tensor([7])}
    got = interpolate_state(b, t, 0.25)
    w = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(got[w], 0.75 * b[w] + 0.25 * t[w], atol=1e-7)
    assert torch.equal(got["steps"], torch.tensor([7]))  # not a float: copied from the tuned one
    half = interpolate_state({"x": torch.tensor([0.0], dtype=torch.float16)}, {"x": torch.tensor([1.0], dtype=torch.float16)}, 0.5)
    assert half["x"].dtype == torch.float16 and half["x"].item() == 0.5  # the dtype is kept
    before = {k: v.clone() for k, v in base.state_dict().items()}
    wise(base, tuned, 0.5)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # inputs not modified


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan, math.inf])
def test_alpha_outside_the_unit_interval_is_refused(pair, alpha):
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        wise(*pair, alpha)
    with pytest.raises(ValueError, match=r"wise must be in \[0, 1\]"):
        FinetuneConfig(wise=alpha).check(1)


def test_two_architectures_are_refused(pair):
    other = tiny_clip(text_layers=2)
    with pytest.raises(InputError, match="not the same architecture.*only in base"):
        wise(other, pair[1], 0.5)
    small = tiny_clip(patch_size=4)
    with pytest.raises(InputError, match=r"not the same architecture: .* is \(\d+"):
        wise(small, pair[1], 0.5)


def _save(model, folder):
    from captum_gradeclip.shapes.model import build_processor

    model.save_pretrained(folder)
    build_processor().save_pretrained(folder)


def test_the_wise_command(tmp_path, pair, capsys):
    from transformers import CLIPModel

    from captum_gradeclip.cli import main

    _save(pair[0], tmp_path / "base")
    _save(pair[1], tmp_path / "tuned")
    out = tmp_path / "mix"
    assert main(["wise", str(tmp_path / "base"), str(tmp_path / "tuned"), "--alpha", "0.25", "--out", str(out)]) == 0
    mixed = CLIPModel.from_pretrained(out)
    w = "text_model.encoder.layers.1.mlp.fc1.weight"
    b, t = pair[0].state_dict()[w], pair[1].state_dict()[w]
    assert torch.allclose(mixed.state_dict()[w], 0.75 * b + 0.25 * t, atol=1e-7)
    assert (out / "tokenizer.json").is_file() and json.loads((out / "WISE.json").read_text())["alpha"] == 0.25
    capsys.readouterr()
    assert main(["wise", str(tmp_path / "base"), str(tmp_path / "tuned"), "--alpha", "1.5", "--out", str(out)]) == 2
    assert "--alpha must be in [0, 1]" in capsys.readouterr().err
    _save(tiny_clip(text_layers=2), tmp_path / "other")
    assert main(["wise", str(tmp_path / "other"), str(tmp_path / "tuned"), "--alpha", "0.5", "--out", str(out)]) == 2
    assert "not the same architecture" in capsys.readouterr().err
    assert main(["wise", str(tmp_path / "nothing"), str(tmp_path / "tuned"), "--alpha", "0.5", "--out", str(out)]) == 2
    assert "BASE" in capsys.readouterr().err


def test_finetune_wise_is_the_interpolation_and_a_finished_run_is_reinterpolated(tmp_path):
    torch.set_num_threads(1)
    cfg = FinetuneConfig(steps=2, batch=4, log_every=100, wise=1.0)
    initial = {k: v.clone() for k, v in load_shapes_clip()[0].state_dict().items()}
    model, processor = load_shapes_clip()
    finetune(model, processor, ShapesSource(), cfg, tmp_path / "a")
    tuned = {k: v.clone() for k, v in model.state_dict().items()}
    model, processor = load_shapes_clip()  # the same finished run, now with --wise 0.5: no step, re-interpolated
    run = finetune(model, processor, ShapesSource(), FinetuneConfig(steps=2, batch=4, log_every=100, wise=0.5),
                   tmp_path / "a")
    assert run["steps_run"] == 0 and run["finished"]
    moved = [k for k in tuned if initial[k].is_floating_point() and not torch.equal(tuned[k], initial[k])]
    assert moved
    for k in moved:
        assert torch.allclose(model.state_dict()[k], 0.5 * (initial[k] + tuned[k]), atol=1e-6), k
    # an interrupted run is not interpolated (its weights are the checkpoint's, mid-run)
    model, processor = load_shapes_clip()
    run = finetune(model, processor, ShapesSource(), FinetuneConfig(steps=2, batch=4, wise=0.0), tmp_path / "b",
                   stop_after=1)
    assert not run["finished"] and any(not torch.equal(model.state_dict()[k], initial[k]) for k in moved)
