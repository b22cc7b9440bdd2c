"""The fine-tuning variants (benchmarks/finetune_ablation.py): confidence-weighted, focal and
sigmoid region terms, the momentum (EMA) anchor of the image-caption term, a frozen projection.
Hand-made toys for the losses; a couple of ShapesCLIP steps for the training parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from captum_gradeclip.distributed import Ranks
from captum_gradeclip.finetune import FinetuneConfig, RegionPhraseLoss, ShapesSource, finetune
from captum_gradeclip.finetune.loss import SIGMOID_BIAS, SIGMOID_SCALE, focal_cross_entropy
from captum_gradeclip.finetune.teacher import MomentumModel
from captum_gradeclip.finetune.train import Student, regions, train_step
from captum_gradeclip.shapes import load_shapes_clip

E = torch.eye(4)
SCALE = torch.tensor(2.0)


def _ce(right: float, others: list) -> float:
    """Cross-entropy by hand of logit ``right`` against ``others``."""
    return -math.log(math.exp(right) / (math.exp(right) + sum(math.exp(o) for o in others)))


def test_confidence_weights_give_the_weighted_mean_by_hand():
    # region 0 matches its phrase (cos 1 vs 0, 0); region 1 is its phrase's opposite (cos -1)
    regions_ = torch.stack([E[0], -E[1], E[2]])
    loss = RegionPhraseLoss()
    l0, l1 = _ce(2, [0, 0]), _ce(-2, [0, 0])
    l2 = l0
    w = torch.tensor([1.0, 3.0, 0.0])
    got = loss.region_loss(regions_, E[:3], torch.arange(3), SCALE, w)
    assert got.item() == pytest.approx((l0 + 3 * l1) / 4, rel=1e-5)
    assert loss.region_loss(regions_, E[:3], torch.arange(3), SCALE).item() == pytest.approx((l0 + l1 + l2) / 3, rel=1e-5)
    same = loss.region_loss(regions_, E[:3], torch.arange(3), SCALE, torch.full((3,), 0.7))
    assert same.item() == pytest.approx((l0 + l1 + l2) / 3, rel=1e-5)  # equal weights: the plain mean
    with pytest.raises(ValueError, match="non-negative"):
        loss.region_loss(regions_, E[:3], torch.arange(3), SCALE, -w)


def test_confidence_is_the_maximum_of_each_mined_map():
    from captum_gradeclip.finetune.data import Sample

    maps = torch.rand(3, 8, 8)
    maps[1, 2, 5] = 4.0
    samples = [Sample(None, "a b", ["a", "b"], maps=maps[:2]), Sample(None, "c", ["c"], maps=maps[2:])]
    masks, conf = regions("grad-eclip", None, torch.zeros(2, 3, 64, 64), samples, (8, 8), FinetuneConfig())
    assert masks.shape == (3, 8, 8)
    assert torch.allclose(conf, maps.flatten(1).amax(-1)) and conf[1].item() == 4.0
    _, ones = regions("uniform", None, torch.zeros(2, 3, 64, 64), samples, (8, 8), FinetuneConfig())
    assert torch.equal(ones, torch.ones(3))


def test_focal_is_cross_entropy_at_gamma_zero_and_the_hand_formula_otherwise():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    assert torch.allclose(focal_cross_entropy(logits, target, 0.0), F.cross_entropy(logits, target, reduction="none"))
    p = logits.softmax(-1)[torch.arange(5), target]
    assert torch.allclose(focal_cross_entropy(logits, target, 2.0), -(1 - p) ** 2 * p.log(), atol=1e-6)
    regions_ = torch.stack([E[0], E[1] + E[0]])
    plain = RegionPhraseLoss().region_loss(regions_, E[:2], torch.arange(2), SCALE)
    focal0 = RegionPhraseLoss(focal_gamma=0.0).region_loss(regions_, E[:2], torch.arange(2), SCALE)
    focal2 = RegionPhraseLoss(focal_gamma=2.0).region_loss(regions_, E[:2], torch.arange(2), SCALE)
    assert focal0.item() == pytest.approx(plain.item(), rel=1e-6) and focal2 < plain


def test_sigmoid_region_term_by_hand():
    out = RegionPhraseLoss(region_form="sigmoid").region_loss(E[:2].clone(), E[:2], torch.arange(2), SCALE)

    def bce(z, y):
        return -math.log(1 / (1 + math.exp(-z))) if y else -math.log(1 - 1 / (1 + math.exp(-z)))

    per_row = bce(SIGMOID_SCALE + SIGMOID_BIAS, 1) + bce(SIGMOID_BIAS, 0)
    assert out.item() == pytest.approx(per_row, rel=1e-5)


def test_distillation_targets_by_hand_and_no_gradient_into_the_anchor():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    cap = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a_img = torch.tensor([[0.8, 0.6], [0.0, 1.0]], requires_grad=True)
    ids = torch.arange(2)
    plain = RegionPhraseLoss().global_loss(img, cap, ids, SCALE)
    assert RegionPhraseLoss(distill=0.0).global_loss(img, cap, ids, SCALE, a_img, cap).item() == pytest.approx(plain.item())
    got = RegionPhraseLoss(distill=0.5).global_loss(img, cap, ids, SCALE, a_img, cap)
    logits = SCALE * img.detach() @ cap.t()
    anchor = SCALE * a_img.detach() @ cap.t()
    t_ic = 0.5 * torch.eye(2) + 0.5 * anchor.softmax(-1)
    t_ci = 0.5 * torch.eye(2) + 0.5 * anchor.t().softmax(-1)
    want = 0.5 * (-(t_ic * logits.log_softmax(-1)).sum(-1).mean() - (t_ci * logits.t().log_softmax(-1)).sum(-1).mean())
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    assert img.grad is not None and a_img.grad is None
    with pytest.raises(ValueError, match="anchor"):
        RegionPhraseLoss(distill=0.5).global_loss(img, cap, ids, SCALE)


def test_momentum_copy_is_an_ema_and_receives_no_gradient():
    model, processor = load_shapes_clip()  # its own copy: gradients are written
    ema = MomentumModel(model, 0.9)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    out = train_step(Student(model), None, processor, FinetuneConfig(momentum=0.9, distill=0.4).loss(),
                     ShapesSource().batch(0, 3, 0, 3), FinetuneConfig(masks="uniform"), Ranks(), ema)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in ema.model.parameters())
    assert model.visual_projection.weight.grad is not None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    ema.update(model)
    now = model.state_dict()
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():  # 0.9 * start + 0.1 * (start + 0.5) for parameters, buffers copied in kind
            assert torch.allclose(v, 0.9 * start[k] + 0.1 * now[k], atol=1e-6), k
    name = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(ema.model.state_dict()[name], start[name] + 0.05, atol=1e-6)
    with pytest.raises(ValueError, match="momentum"):
        MomentumModel(model, 1.0)


def test_frozen_projection_and_momentum_resume(tmp_path):
    torch.set_num_threads(1)
    cfg = FinetuneConfig(steps=2, batch=3, masks="uniform", freeze_projection=True, momentum=0.5, distill=0.4,
                         confidence=True, save_every=10, log_every=100)
    model, processor = load_shapes_clip()
    proj = model.visual_projection.weight.detach().clone()
    attn = model.vision_model.encoder.layers[-1].self_attn.v_proj.weight.detach().clone()
    finetune(model, processor, ShapesSource(), cfg, tmp_path / "a")
    assert torch.equal(model.visual_projection.weight, proj) and model.visual_projection.weight.requires_grad
    assert not torch.equal(model.vision_model.encoder.layers[-1].self_attn.v_proj.weight, attn)
    straight = {k: v.clone() for k, v in model.state_dict().items()}
    model, processor = load_shapes_clip()
    finetune(model, processor, ShapesSource(), cfg, tmp_path / "b", stop_after=1)
    model, processor = load_shapes_clip()
    finetune(model, processor, ShapesSource(), cfg, tmp_path / "b")  # the momentum copy resumes too
    for k, v in model.state_dict().items():
        assert torch.equal(v, straight[k]), k
    with pytest.raises(ValueError, match="momentum"):
        FinetuneConfig(momentum=0.9).check(1)  # distill without momentum or momentum without distill


def test_a_caption_without_phrases_joins_only_the_image_caption_term(capsys):
    from dataclasses import replace

    from captum_gradeclip.cli import main
    from captum_gradeclip.finetune.teacher import Teacher

    model, processor = load_shapes_clip()
    teacher = Teacher(model, processor.tokenizer)
    samples = ShapesSource().batch(0, 3, 0, 3)
    mixed = [samples[0], replace(samples[1], phrases=[], masks=None), samples[2]]
    cfg = FinetuneConfig()
    with torch.no_grad():
        out = train_step(Student(model), teacher, processor, cfg.loss(), mixed, cfg, Ranks())
        ref = train_step(Student(model), teacher, processor, cfg.loss(), [samples[0], samples[2]], cfg, Ranks())
    # per-image features and maps: the region term is that of the other two samples
    assert out.region.item() == pytest.approx(ref.region.item(), rel=1e-4)
    assert out.global_.item() != pytest.approx(ref.global_.item(), rel=1e-4)
    assert main(["finetune", "--out", "unused", "--phrases", "auto", "--steps", "1"]) == 2
    assert "--phrases auto needs --pairs" in capsys.readouterr().err
