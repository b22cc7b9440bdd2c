"""Fine-grained fine-tuning (captum_gradeclip.finetune): the loss, masks, dense features, teacher,
training steps, resume and data errors. Tiny random CLIPs and a handful of ShapesCLIP steps."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity
from captum_gradeclip.baselines import MaskCLIP
from captum_gradeclip.distributed import Ranks
from captum_gradeclip.finetune import (
    DataError,
    FinetuneConfig,
    RegionPhraseLoss,
    ShapesSource,
    Teacher,
    dense_features,
    finetune,
    grid_masks,
    pool_regions,
    read_pairs,
    soft_mask,
)
from captum_gradeclip.finetune.evaluate import _miou
from captum_gradeclip.finetune.loss import RegionPhraseLossOutput
from captum_gradeclip.finetune.train import Student, train_step
from captum_gradeclip.shapes import load_shapes_clip


def _loss_inputs(regions, phrases, ids):
    n = 2
    img = torch.eye(4)[:n]
    return dict(region_embeds=regions, phrase_embeds=phrases, phrase_ids=torch.tensor(ids),
                image_embeds=img, caption_embeds=img.clone(), caption_ids=torch.arange(n),
                logit_scale=torch.tensor(2.0))


def test_loss_matching_regions_beat_swapped_and_match_hand_value():
    e = torch.eye(4)
    phrases = e[:3]
    match = RegionPhraseLoss()(**_loss_inputs(phrases.clone(), phrases, [0, 1, 2]))
    swapped = RegionPhraseLoss()(**_loss_inputs(phrases[[1, 2, 0]], phrases, [0, 1, 2]))
    assert match.loss < swapped.loss
    # orthonormal: the right phrase scores 2, the two others 0
    assert match.region.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2)), rel=1e-5)
    assert swapped.region.item() == pytest.approx(-math.log(1 / (math.exp(2) + 2)), rel=1e-5)


def test_loss_equal_phrases_share_a_target_and_equal_captions_are_no_negatives():
    e = torch.eye(4)
    # two regions named by the same phrase: one class, not two competing ones
    out = RegionPhraseLoss()(**_loss_inputs(e[[0, 0, 1]], e[[0, 0, 1]], [7, 7, 3]))
    assert out.region.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 1)), rel=1e-5)
    same = dict(_loss_inputs(e[:2], e[:2], [0, 1]), image_embeds=e[[0, 0]], caption_embeds=e[[0, 0]],
                caption_ids=torch.tensor([5, 5]))
    assert RegionPhraseLoss().global_loss(same["image_embeds"], same["caption_embeds"], same["caption_ids"],
                                          torch.tensor(10.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert RegionPhraseLoss(region_weight=0.0)(**same).loss.item() == pytest.approx(0.0, abs=1e-6)


def test_loss_shape_errors():
    e = torch.eye(4)
    with pytest.raises(ValueError, match="phrase_ids"):
        RegionPhraseLoss()(**_loss_inputs(e[:2], e[:2], [0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(R, E\)"):
        RegionPhraseLoss()(**_loss_inputs(e[:2], e[:3], [0, 1]))
    # no region in the batch (mined captions without phrases): a zero region term
    assert RegionPhraseLoss()(**_loss_inputs(e[:0], e[:0], [])).region.item() == 0.0


def test_soft_mask_and_grid_masks():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    m = soft_mask(maps)
    expect = torch.sigmoid((torch.tensor([0, 0.25, 0.5, 1.0]) - 0.5) / 0.1)
    assert torch.allclose(m[0].flatten(), expect)
    assert torch.allclose(m[1], torch.full((2, 2), torch.sigmoid(torch.tensor(5.0)).item()))  # constant map: uniform
    with pytest.raises(ValueError, match="temperature"):
        soft_mask(maps, temperature=0)
    with pytest.raises(ValueError, match="NaN"):
        soft_mask(maps * float("nan"))
    pix = torch.zeros(1, 8, 8, dtype=torch.bool)
    pix[0, :4, :2] = True
    assert torch.equal(grid_masks(pix, (2, 2)), torch.tensor([[[0.5, 0.0], [0.0, 0.0]]]))


def test_pool_regions_by_hand_and_errors():
    dense = torch.arange(2 * 2 * 2 * 3, dtype=torch.float).view(2, 2, 2, 3)
    masks = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    got = pool_regions(dense, masks, torch.tensor([1]))
    assert torch.allclose(got[0], (dense[1, 0, 0] + 3 * dense[1, 1, 1]) / 4)
    with pytest.raises(ValueError, match="positive sum"):
        pool_regions(dense, torch.zeros(1, 2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="like the dense grid"):
        pool_regions(dense, torch.ones(1, 3, 3), torch.tensor([0]))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_dense_features_are_maskclip_and_the_global_embedding(attn, texts):
    model = tiny_clip(attn)
    torch.manual_seed(0)
    px = torch.randn(2, 3, 32, 32)
    dense, image = dense_features(model, px)
    assert dense.shape == (2, 4, 4, 16)
    assert torch.allclose(image, model.get_image_features(pixel_values=px).pooler_output, atol=1e-6)
    sim = ImageTextSimilarity(model, *texts)
    ref = MaskCLIP(sim, model.vision_model.encoder.layers[-1]).attribute_all(px)  # (N, T, h, w)
    ours = torch.einsum("nhwe,te->nthw", F.normalize(dense, dim=-1), sim.text_embeds)
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.fixture(scope="module")
def shapes():
    return load_shapes_clip()


def test_teacher_maps_equal_attribute_all_one_phrase_at_a_time(shapes):
    model, processor = shapes
    samples = ShapesSource().batch(0, 3, 0, 3)
    px = processor(images=[s.image for s in samples], return_tensors="pt").pixel_values
    teacher = Teacher(model, processor.tokenizer)
    maps = teacher.maps(px, [s.phrases for s in samples])
    r = 0
    for i, s in enumerate(samples):
        for p in s.phrases:
            tok = processor.tokenizer([p], return_tensors="pt")
            sim = ImageTextSimilarity(model, tok.input_ids, tok.attention_mask)
            ref = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(px[i:i + 1], target=0)
            assert torch.allclose(maps[r], ref[0, 0], atol=1e-5 * ref.abs().max().item())
            r += 1
    assert r == len(maps)
    with pytest.raises(ValueError, match="no phrases"):
        teacher.maps(px[:1], [[]])


def test_gradients_reach_the_student_never_the_teacher():
    model, processor = load_shapes_clip()  # its own copy: this test writes gradients
    cfg = FinetuneConfig(batch=4)
    teacher = Teacher(model, processor.tokenizer)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    out = train_step(Student(model), teacher, processor, RegionPhraseLoss(), ShapesSource().batch(0, 4, 0, 4),
                     cfg, Ranks())
    assert isinstance(out, RegionPhraseLossOutput) and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ("vision_model.encoder.layers.3.self_attn.v_proj.weight", "visual_projection.weight",
                 "text_projection.weight", "vision_model.embeddings.patch_embedding.weight", "logit_scale"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.model.state_dict().items())


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    cfg = FinetuneConfig(steps=4, batch=6, save_every=10, log_every=100)
    model, processor = load_shapes_clip()
    finetune(model, processor, ShapesSource(), cfg, tmp_path / "a")
    straight = _weights(model)
    model, processor = load_shapes_clip()
    run = finetune(model, processor, ShapesSource(), cfg, tmp_path / "b", stop_after=2)
    assert run["steps_run"] == 2 and (tmp_path / "b" / "checkpoint.pt").is_file()
    model, processor = load_shapes_clip()  # a fresh process would load the initial model again
    run = finetune(model, processor, ShapesSource(), cfg, tmp_path / "b")
    assert run["steps_run"] == 2
    resumed = _weights(model)
    initial = _weights(load_shapes_clip()[0])
    assert any(not torch.equal(straight[k], initial[k]) for k in straight)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    with pytest.raises(ValueError, match="other settings"):
        finetune(model, processor, ShapesSource(), FinetuneConfig(steps=4, batch=6, lr=1.0), tmp_path / "b")


def test_miou_by_hand(shapes):
    from captum_gradeclip.shapes import render_scene

    scene = render_scene(seed=3, n_objects=2)
    dense = F.normalize(torch.randn(1, 8, 8, 128), dim=-1)
    prompts = F.normalize(torch.randn(48, 128), dim=-1)
    # a background level above every cosine: everything is background
    got = _miou(dense, prompts, [scene], torch.tensor([2.0]))
    bg = ~scene.masks.any(0)
    assert got.item() == pytest.approx(bg.float().mean().item() / 3, rel=1e-5)  # bg IoU; 2 objects at 0


def _png(path, size=32):
    from PIL import Image

    Image.new("RGB", (size, size), (200, 30, 30)).save(path)


def test_pairs_file_errors(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    cases = {
        '{"image": "a.png", "caption": "a red circle", "phrases": []}': "has no phrases",
        '{"image": "a.png", "caption": "a red circle", "phrases": ["a blue square"]}': "not in the caption",
        '{"image": "broken.png", "caption": "a red circle", "phrases": ["a red circle"]}': "cannot read",
        '{"image": "missing.png", "caption": "a red circle", "phrases": ["a red circle"]}': "not found",
        '{"image": "a.png", "caption": "a red circle"}': "has no phrases",
        'not json': "not JSON",
    }
    for line, message in cases.items():
        f = tmp_path / "pairs.jsonl"
        f.write_text('{"image": "a.png", "caption": "a red circle", "phrases": ["red circle"]}\n' + line + "\n")
        with pytest.raises(DataError, match=message) as err:
            read_pairs(f)
        assert "pairs.jsonl:2" in str(err.value) and isinstance(err.value, ValueError)
    f.write_text('{"image": "a.png", "caption": "a red circle and a blue bar"}\n')
    assert read_pairs(f, separator=" and ")[0].phrases == ["a red circle", "a blue bar"]


def test_cli_finetunes_any_hf_clip_on_a_pairs_file(tmp_path, capsys):
    from transformers import CLIPModel

    from captum_gradeclip.cli import main
    from captum_gradeclip.shapes.model import build_config, build_processor

    processor = build_processor()
    tok = processor.tokenizer
    cfg = build_config(len(tok), tok.eos_token_id, tok.bos_token_id)
    cfg.vision_config.num_hidden_layers = cfg.text_config.num_hidden_layers = 1
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(tmp_path / "init")
    processor.save_pretrained(tmp_path / "init")
    for i in range(4):
        _png(tmp_path / f"{i}.png", 64)
    rows = [{"image": f"{i}.png", "caption": "a red circle and a blue bar"} for i in range(4)]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = ["finetune", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "init"), "--pairs",
            str(tmp_path / "p.jsonl"), "--steps", "2", "--batch", "2", "--threads", "1"]
    assert main(args) == 2  # no phrases and no separator
    assert "has no phrases" in capsys.readouterr().err
    assert main(args + ["--separator", " and "]) == 0
    tuned = CLIPModel.from_pretrained(tmp_path / "out")
    init = CLIPModel.from_pretrained(tmp_path / "init")
    assert not torch.equal(tuned.visual_projection.weight, init.visual_projection.weight)
    record = json.loads((tmp_path / "out" / "TRAINING.json").read_text())
    assert record["stages"][-1]["config"]["steps"] == 2
    gt = args + ["--separator", " and ", "--masks", "gt", "--out", str(tmp_path / "gt")]
    assert main(gt) == 2  # the oracle needs true masks
    assert "true masks" in capsys.readouterr().err


def test_mined_maps_from_the_dataset_engine_replace_the_teacher(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from captum_gradeclip.finetune.data import PairsSource, attach_mined_maps
    from captum_gradeclip.finetune.train import region_masks
    from captum_gradeclip.scale.table import to_table

    for i in range(2):
        _png(tmp_path / f"{i}.png", 64)
    (tmp_path / "p.jsonl").write_text("".join(
        json.dumps({"image": f"{i}.png", "caption": "a red circle and a blue bar"}) + "\n" for i in range(2)))
    samples = read_pairs(tmp_path / "p.jsonl", separator=" and ")
    torch.manual_seed(0)
    rows = [{"image": f"{i}.png", "text": t, "text_index": j, "score": 0.5, "map": torch.rand(8, 8)}
            for i in range(2) for j, t in enumerate(["a red circle", "a blue bar"])]
    (tmp_path / "mined").mkdir()
    pq.write_table(to_table(rows[:3], text_maps=False), tmp_path / "mined" / "shard-00000.parquet")
    with pytest.raises(DataError, match="no map of image '1.png'"):
        attach_mined_maps(samples, tmp_path / "mined")
    pq.write_table(to_table(rows, text_maps=False), tmp_path / "mined" / "shard-00000.parquet")
    attach_mined_maps(samples, tmp_path / "mined")
    assert PairsSource(samples).mined
    got = region_masks("grad-eclip", None, torch.zeros(2, 3, 64, 64), samples, (8, 8), FinetuneConfig())
    want = soft_mask(torch.stack([r["map"].half().float() for r in rows]))
    assert torch.allclose(got, want)
