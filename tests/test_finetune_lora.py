"""LoRA fine-tuning (captum_gradeclip.finetune.lora, ``finetune --lora``): adapters on the attention
projections found through LoadedCLIP, only they train, merged on save into a plain CLIPModel,
resume, peft missing, the model restored on error."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import tiny_clip

pytest.importorskip("peft")

from captum_gradeclip.distributed import Ranks  # noqa: E402
from captum_gradeclip.errors import InputError  # noqa: E402
from captum_gradeclip.finetune import FinetuneConfig, RegionPhraseLoss, ShapesSource, finetune  # noqa: E402
from captum_gradeclip.finetune.lora import (  # noqa: E402
    add_lora,
    clip_layers,
    lora_parameters,
    lora_targets,
    lora_training,
    merge_lora,
)
from captum_gradeclip.finetune.train import Student, train_step  # noqa: E402
from captum_gradeclip.shapes import load_shapes_clip  # noqa: E402

PROJ = ("q_proj", "k_proj", "v_proj", "out_proj")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_targets_are_the_attention_projections_of_both_towers():
    model = tiny_clip(text_layers=3)
    names = lora_targets(model, clip_layers(model))
    want = [f"{tower}.encoder.layers.{i}.self_attn.{p}" for tower, n in (("vision_model", 2), ("text_model", 3))
            for i in range(n) for p in PROJ]
    assert sorted(names) == sorted(want)


def test_targets_of_an_openai_layout_model_are_its_multihead_attentions():
    from openai_layout import OpenAICLIP

    from captum_gradeclip.models import wrap_open_clip

    model = OpenAICLIP()
    clip = wrap_open_clip(model, None, None)
    names = lora_targets(model, list(clip.image_layers) + list(clip.text_layers))
    assert names == [f"visual.transformer.resblocks.{i}.attn" for i in range(2)] + \
        [f"transformer.resblocks.{i}.attn" for i in range(3)]
    with pytest.raises(InputError, match="no attention projection"):
        lora_targets(model, [model.visual.conv1])


def test_one_step_trains_only_the_adapters_of_rank_r():
    torch.set_num_threads(1)
    model, processor = load_shapes_clip()
    before = _state(model)
    with lora_training(model, 4) as params:
        assert params and all(".lora_" in n for n in params)
        assert all(p.shape[0] == 4 for n, p in params.items() if ".lora_A." in n)  # A: (r, in)
        assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
        opt = torch.optim.SGD(list(params.values()), lr=0.5)
        lora_b = {n: p.detach().clone() for n, p in params.items() if ".lora_B." in n}
        out = train_step(Student(model), None, processor, RegionPhraseLoss(), ShapesSource().batch(0, 4, 0, 4),
                         FinetuneConfig(masks="uniform"), Ranks())
        out.loss.backward()
        opt.step()
        assert any(not torch.equal(p, lora_b[n]) for n, p in params.items() if n in lora_b)  # adapters moved
        base = {n.replace(".base_layer", ""): v for n, v in model.state_dict().items() if ".lora_" not in n}
        assert set(base) == set(before)
        for n, v in base.items():
            assert torch.equal(v, before[n]), n  # every base parameter unchanged after the step
    after = _state(model)  # merged: a plain model again, only attention projections changed
    assert set(after) == set(before) and all(p.requires_grad for p in model.parameters())
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    assert changed and all(n.split(".")[-2] in PROJ and n.endswith("weight") for n in changed)


def test_an_error_drops_the_adapters_and_restores_the_flags():
    model = tiny_clip()
    model.visual_projection.weight.requires_grad_(False)
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with lora_training(model, 2) as params:
            for p in params.values():
                torch.nn.init.normal_(p)  # a non-zero adapter that must not be merged
            raise RuntimeError("boom")
    assert not lora_parameters(model) and set(_state(model)) == set(before)
    assert all(torch.equal(v, before[k]) for k, v in _state(model).items())
    assert not model.visual_projection.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "visual_projection.weight")


def test_merge_equals_the_adapted_forward():
    model = tiny_clip()
    add_lora(model, clip_layers(model), 2, seed=3)
    for p in lora_parameters(model).values():
        torch.nn.init.normal_(p, std=0.1)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = model.get_image_features(pixel_values=px).pooler_output
        assert merge_lora(model) == 4 * 5
        merged = model.get_image_features(pixel_values=px).pooler_output
    assert torch.allclose(adapted, merged, atol=1e-5) and not lora_parameters(model)


def test_finetune_lora_saves_a_plain_clip_model_and_resumes(tmp_path):
    from transformers import CLIPModel

    torch.set_num_threads(1)
    cfg = FinetuneConfig(steps=3, batch=4, lr=1e-3, lora=4, save_every=10, log_every=100)
    initial = _state(load_shapes_clip()[0])
    model, processor = load_shapes_clip()
    finetune(model, processor, ShapesSource(), cfg, tmp_path / "a")
    assert type(model) is CLIPModel and set(_state(model)) == set(initial)
    model.save_pretrained(tmp_path / "saved")
    loaded = CLIPModel.from_pretrained(tmp_path / "saved")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    straight = _state(model)
    assert any(not torch.equal(straight[k], initial[k]) for k in initial)
    model, processor = load_shapes_clip()
    assert finetune(model, processor, ShapesSource(), cfg, tmp_path / "b", stop_after=1)["steps_run"] == 1
    model, processor = load_shapes_clip()
    assert finetune(model, processor, ShapesSource(), cfg, tmp_path / "b")["steps_run"] == 2
    resumed = _state(model)
    for k in initial:
        assert torch.allclose(resumed[k], straight[k], atol=1e-7), k
    with pytest.raises(ValueError, match="other settings.*lora"):
        finetune(*load_shapes_clip(), ShapesSource(), FinetuneConfig(steps=3, batch=4, lr=1e-3, lora=8), tmp_path / "b")


def test_peft_missing_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from captum_gradeclip.cli import main

    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(InputError, match=r"captum-gradeclip\[lora\]"):
        add_lora(tiny_clip(), clip_layers(tiny_clip()), 4)
    assert main(["finetune", "--out", str(tmp_path / "o"), "--lora", "4", "--steps", "1"]) == 2
    assert "needs the peft package" in capsys.readouterr().err
    assert main(["finetune", "--out", str(tmp_path / "o"), "--lora", "-1"]) == 2
    with pytest.raises(ValueError, match="LoRA rank"):
        FinetuneConfig(lora=-2).check(1)
