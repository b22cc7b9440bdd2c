"""Real open_clip models (random weights, tiny configs, offline) through the same classes, against
the line-by-line references in references.py.

Skipped where open_clip is not installed; CI runs the suite a second time in an environment with
the ``open_clip`` extra (see .ci/run).
"""

import pathlib
import re

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from conftest import hook_count  # noqa: E402
from openai_layout import tokens  # noqa: E402
from references import (  # noqa: E402
    check_attnpool,
    model_state,
    record_outputs,
    text_reference,
    vit_reference,
)

from captum_gradeclip import ImageGradECLIP, TextGradECLIP  # noqa: E402
from captum_gradeclip.adapters import FusedQKVSelfAttentionAdapter, MultiheadAttentionAdapter, find_adapter  # noqa: E402
from captum_gradeclip.openai import EncoderImageTextSimilarity, EncoderTextImageSimilarity  # noqa: E402


def tiny(vision: str = "vit", seed: int = 0, **vision_extra):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    if vision == "vit":
        vcfg = CLIPVisionCfg(layers=2, width=32, head_width=8, patch_size=8, image_size=32, **vision_extra)
    else:
        vcfg = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=16, image_size=64, **vision_extra)
    tcfg = CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=4, layers=3)
    return CLIP(embed_dim=16, vision_cfg=vcfg, text_cfg=tcfg).eval()


def test_adapters_chosen_by_structure():
    model = tiny()
    assert isinstance(find_adapter(model.visual.transformer.resblocks[-1]), MultiheadAttentionAdapter)
    assert model.visual.transformer.resblocks[-1].attn.batch_first  # open_clip runs batch-first
    custom = tiny(qk_norm=True)
    assert isinstance(find_adapter(custom.visual.transformer.resblocks[-1]), FusedQKVSelfAttentionAdapter)


@pytest.mark.parametrize("single_head", [False, True])
def test_vit_matches_published_recipe(single_head, pixels):
    model = tiny()
    sim = EncoderImageTextSimilarity(model, tokens())
    assert sim.patch_size == 8 and sim.pooled_token == 0
    outs, h = record_outputs(sim)
    got = ImageGradECLIP(sim, model.visual.transformer.resblocks[-1], single_head=single_head).attribute(pixels, target=2)
    h.remove()
    ref, ref_score = vit_reference(model, pixels, sim.text_embeds, 2, single_head)
    assert got.shape == (2, 1, 4, 4) and got.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    with torch.enable_grad():
        own = sim(pixels)
    if single_head:  # the reproduction mode explains a modified model: its score is not the model's
        assert not torch.allclose(outs[0], own)
        torch.testing.assert_close(outs[0][:, 2].sum(), ref_score.detach(), rtol=1e-5, atol=1e-6)
    else:  # the model's own score, bit for bit
        assert torch.equal(outs[0], own)
    assert hook_count(model) == 0


def test_vit_attribute_all_and_logits(pixels):
    model = tiny()
    sim = EncoderImageTextSimilarity(model, tokens(), logits=True)
    g = ImageGradECLIP(sim, model.visual.transformer.resblocks[-1])
    all_maps = g.attribute_all(pixels)
    assert all_maps.shape == (2, 3, 4, 4)
    for t in range(3):
        torch.testing.assert_close(all_maps[:, t:t + 1], g.attribute(pixels, target=t), rtol=1e-5, atol=1e-6)
    # logits are the cosine times the logit scale: the same map up to that scale
    cos_map = ImageGradECLIP(EncoderImageTextSimilarity(model, tokens()), model.visual.transformer.resblocks[-1])
    torch.testing.assert_close(all_maps, cos_map.attribute_all(pixels) * model.logit_scale.exp().item(),
                               rtol=1e-4, atol=1e-6)


def test_text_tower_matches_reference(pixels):
    model = tiny()
    tsim = EncoderTextImageSimilarity(model, pixels)
    assert tsim.text_pool == "argmax"
    layers = list(model.transformer.resblocks)
    got = TextGradECLIP(tsim, layers, spatial="attention").attribute(tokens(), target=1, relu_attributions=False)
    ref = text_reference(model, tokens(), tsim.image_embeds, 1, layers, model.attn_mask)
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    w = TextGradECLIP(tsim, layers[-2:]).attribute(tokens(), target=0)
    assert w.shape == (3, 8) and (w >= 0).all() and w[:, 0].eq(0).all() and w[0, 3:].eq(0).all()
    assert hook_count(model) == 0


@pytest.mark.parametrize("single_head", [False, True])
def test_resnet_attention_pool_matches_reference(single_head):
    sim = check_attnpool(tiny("resnet"), EncoderImageTextSimilarity, tokens(), 0, single_head)
    assert sim.patch_size is None and sim.image_pool == "attnpool"


def test_custom_attention_block_equals_multihead_path(pixels):
    """open_clip's own Attention (block_type="custom") with the same weights as the default
    nn.MultiheadAttention block computes the same model: the same maps through another adapter."""
    default = tiny()
    custom = tiny(block_type="custom")
    missing, unexpected = custom.load_state_dict(default.state_dict(), strict=False)
    assert not unexpected and all("ln_" in k or "head_scale" in k for k in missing)
    assert isinstance(find_adapter(custom.visual.transformer.resblocks[-1]), FusedQKVSelfAttentionAdapter)
    maps = []
    for model in (default, custom):
        sim = EncoderImageTextSimilarity(model, tokens())
        for spatial in ("cosine", "attention"):
            maps.append(ImageGradECLIP(sim, model.visual.transformer.resblocks[-1], spatial=spatial).attribute_all(pixels))
    torch.testing.assert_close(maps[2], maps[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps[3], maps[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("single_head", [False, True])
def test_custom_attention_with_qk_norm_and_head_scale(single_head, pixels):
    model = tiny(qk_norm=True, scale_heads=True)
    attn = model.visual.transformer.resblocks[-1].attn
    with torch.no_grad():  # make the per-head norms and scales do something
        attn.head_scale.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]).view(4, 1, 1))
        attn.ln_q.weight.uniform_(0.5, 1.5)
        attn.ln_k.bias.uniform_(-0.5, 0.5)
    sim = EncoderImageTextSimilarity(model, tokens())
    outs, h = record_outputs(sim)
    got = ImageGradECLIP(sim, model.visual.transformer.resblocks[-1], single_head=single_head).attribute(pixels, target=1)
    h.remove()
    ref, _ = vit_reference(model, pixels, sim.text_embeds, 1, single_head)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    with torch.enable_grad():
        assert torch.equal(outs[0], sim(pixels)) != single_head
    assert hook_count(model) == 0


@pytest.mark.parametrize("train_mode", [False, True])
def test_no_side_effects_on_success(train_mode, pixels):
    model = tiny().train(train_mode)
    for p in model.visual.conv1.parameters():
        p.requires_grad_(False)  # a partly frozen model
    before = model_state(model)
    sim = EncoderImageTextSimilarity(model, tokens())
    ImageGradECLIP(sim, model.visual.transformer.resblocks[-1]).attribute(pixels, target=0)
    ImageGradECLIP(sim, model.visual.transformer.resblocks[-1], single_head=True).attribute_all(pixels)
    tsim = EncoderTextImageSimilarity(model, pixels)
    TextGradECLIP(tsim, list(model.transformer.resblocks)).attribute(tokens(), target=0)
    assert model_state(model) == before
    resnet = tiny("resnet").requires_grad_(False)  # fully frozen
    before = model_state(resnet)
    a = ImageGradECLIP(EncoderImageTextSimilarity(resnet, tokens()), resnet.visual.attnpool).attribute(
        torch.randn(1, 3, 64, 64), target=0)
    assert a.abs().sum() > 0 and model_state(resnet) == before


def test_no_side_effects_on_error(pixels):
    model = tiny()
    before = model_state(model)
    sim = EncoderImageTextSimilarity(model, tokens())
    g = ImageGradECLIP(sim, model.visual.transformer.resblocks[-1])
    with pytest.raises(IndexError):
        g.attribute(pixels, target=3)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        g.attribute(torch.randn(1, 3, 36, 32), target=0)

    def failing(x):
        sim(x)
        raise RuntimeError("boom inside the forward")

    with pytest.raises(RuntimeError, match="boom"):
        ImageGradECLIP(failing, model.visual.transformer.resblocks[-1], patch_size=8).attribute(pixels, target=0)
    assert model_state(model) == before and torch.is_grad_enabled()
    assert torch.backends.mha.get_fastpath_enabled()  # PyTorch's global MHA setting restored


def test_errors_name_the_problem(pixels):
    model = tiny()
    sim = EncoderImageTextSimilarity(model, tokens())
    with pytest.raises(TypeError, match=r"no supported attention found in Sequential \(children: c_fc: Linear"):
        ImageGradECLIP(sim, model.visual.transformer.resblocks[-1].mlp)
    with pytest.raises(TypeError, match="register_adapter"):
        ImageGradECLIP(sim, model.visual.conv1)
    with pytest.raises(ValueError, match="holds 2 attention modules"):
        ImageGradECLIP(sim, model.visual.transformer)
    with pytest.raises(ValueError, match="must run exactly once|ran 0 times"):
        ImageGradECLIP(sim, model.transformer.resblocks[-1]).attribute(pixels, target=0)  # text tower layer
    cosine = tiny(scaled_cosine_attn=True)
    with pytest.raises(NotImplementedError, match="scaled cosine attention"):
        ImageGradECLIP(EncoderImageTextSimilarity(cosine, tokens()), cosine.visual.transformer.resblocks[-1])
    avg = tiny(pool_type="avg")
    avg_sim = EncoderImageTextSimilarity(avg, tokens())
    assert avg_sim.pooled_token is None
    with pytest.raises(ValueError, match="pools with 'avg', not a class token"):
        ImageGradECLIP(avg_sim, avg.visual.transformer.resblocks[-1])
    tsim = EncoderTextImageSimilarity(model, pixels)
    tsim.text_pool = "first"
    with pytest.raises(ValueError, match="pool_type='first'"):
        TextGradECLIP(tsim, model.transformer.resblocks[-1]).attribute(tokens(), target=0)
    assert hook_count(model) == 0


def test_text_pool_types(pixels):
    model = tiny()
    tsim = EncoderTextImageSimilarity(model, pixels)
    ids = tokens()
    tsim.text_pool, tsim.text_eos_id = "eos", 49
    assert tsim.eos_positions(ids).tolist() == [3, 5, 2]
    tsim.text_eos_id = 2  # open_clip's default eos_id is 2: its first occurrence, not the argmax
    with pytest.raises(ValueError, match=r"text\(s\) \[0, 1, 2\] have no EOS token \(id 2\)"):
        tsim.eos_positions(ids)
    tsim.text_pool = "last"
    assert tsim.eos_positions(ids).tolist() == [7, 7, 7]


def test_readme_open_clip_quickstart_runs():
    """The docs' open_clip snippet (docs/explain.md), with ``pretrained=None`` (random weights,
    offline) in place of ``pretrained="openai"`` (a download)."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "explain.md").read_text()
    section = text.split("**open_clip / OpenAI CLIP**", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'pretrained="openai"' in code
    code = code.replace('pretrained="openai"', "pretrained=None")
    scope: dict = {}
    exec(compile(code, "docs/explain.md open_clip example", "exec"), scope)
    assert scope["attr"].shape == (1, 1, 7, 7) and torch.isfinite(scope["attr"]).all()
    assert scope["all_maps"].shape == (1, len(scope["texts"]), 7, 7)
    assert scope["words"].shape == scope["tokens"].shape == (len(scope["texts"]), 77)
    assert scope["words"][:, 0].eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_finite_maps(dtype, pixels):
    fp32 = tiny()
    ref_map = ImageGradECLIP(EncoderImageTextSimilarity(fp32, tokens()), fp32.visual.transformer.resblocks[-1]).attribute(
        pixels, target=0)
    model = tiny().to(dtype)
    a = ImageGradECLIP(EncoderImageTextSimilarity(model, tokens()), model.visual.transformer.resblocks[-1]).attribute(
        pixels.to(dtype), target=0)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.nn.functional.cosine_similarity(a.flatten(), ref_map.flatten(), dim=0) > 0.95
    w = TextGradECLIP(EncoderTextImageSimilarity(model, pixels.to(dtype)), list(model.transformer.resblocks)).attribute(
        tokens(), target=0)
    assert torch.isfinite(w).all() and w.abs().sum() > 0


@pytest.mark.parametrize("vision", ["vit", "resnet"])
def test_similarity_equals_the_packages_own_logits(vision):
    model = tiny(vision)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32 if vision == "vit" else 64, 32 if vision == "vit" else 64)
    with torch.enable_grad():
        img, txt, scale = model(x, tokens())
        own = scale * img @ txt.t()
        assert torch.equal(EncoderImageTextSimilarity(model, tokens(), logits=True)(x), own)
        assert torch.equal(EncoderTextImageSimilarity(model, x, logits=True)(tokens()), own.t().contiguous())


def test_speed_benchmark_open_clip_cell_runs():
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed", path)
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    cell = speed.run_cell(True, "attribute_all", 224, 2, 1, "open_clip")
    assert cell["method"] == "attribute_all" and cell["seconds"] > 0 and cell["peak_mb"] > 0


def test_blocks_before_the_explained_layer_build_no_graph(pixels):
    """open_clip's batch-first MultiheadAttention would take PyTorch's fused kernel without
    autograd; the fast path is switched off during the explained forward (and restored, also on
    error), so the blocks before the explained one run without a graph and the score stays the
    model's own."""
    model = tiny()
    sim = EncoderImageTextSimilarity(model, tokens())
    seen = {}
    blocks = model.visual.transformer.resblocks
    handles = [blocks[i].register_forward_hook(
        lambda m, a, out, i=i: seen.__setitem__(i, (torch.is_grad_enabled(), out.requires_grad))) for i in (0, 1)]
    outs, h = record_outputs(sim)
    handles.append(h)
    try:
        ImageGradECLIP(sim, blocks[1]).attribute(pixels, target=0)
        assert seen == {0: (False, False), 1: (True, True)}
        with pytest.raises(IndexError):
            ImageGradECLIP(sim, blocks[1]).attribute(pixels, target=9)
    finally:
        for h in handles:
            h.remove()
    assert torch.backends.mha.get_fastpath_enabled()
    with torch.enable_grad():
        assert torch.equal(outs[0], sim(pixels))


@pytest.fixture(scope="module")
def shapes_pair():
    """The shipped ShapesCLIP and the same weights in open_clip's layout, with one scene's inputs
    for both (open_clip pads to its context length with the pad id, 573, which is also EOS: the
    argmax pools at the first one, as Hugging Face does)."""
    from references import hf_clip_to_open_clip

    from captum_gradeclip import ImageTextSimilarity, TextImageSimilarity
    from captum_gradeclip.shapes import load_shapes_clip, render_scene

    hf, processor = load_shapes_clip()
    oc = hf_clip_to_open_clip(hf)
    scene = render_scene(seed=5, n_objects=3)
    texts = scene.prompts + [scene.caption()]
    inputs = processor(text=texts, images=[scene.image], return_tensors="pt", padding=True)
    ids, mask, pixels = inputs.input_ids, inputs.attention_mask, inputs.pixel_values
    pad = hf.config.text_config.pad_token_id
    oc_ids = torch.full((len(texts), oc.context_length), pad, dtype=torch.long)
    oc_ids[:, :ids.shape[1]] = torch.where(mask.bool(), ids, pad)
    return dict(hf=hf, oc=oc, ids=ids, mask=mask, pixels=pixels, oc_ids=oc_ids, texts=texts,
                sim_hf=ImageTextSimilarity(hf, input_ids=ids, attention_mask=mask),
                sim_oc=EncoderImageTextSimilarity(oc, oc_ids),
                tsim_hf=TextImageSimilarity(hf, pixel_values=pixels), tsim_oc=EncoderTextImageSimilarity(oc, pixels))


def _close_to(got, want):
    assert want.abs().amax() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_trained_shapes_clip_gives_the_same_maps_in_open_clip_layout(shapes_pair):
    """The shipped ShapesCLIP (trained, Hugging Face layout) copied into open_clip's layout is the
    same network: scores and Grad-ECLIP maps through the nn.MultiheadAttention adapter equal those
    through the Hugging Face q/k/v/out_proj adapter, on a trained model whose maps mean something."""
    p = shapes_pair
    hf, oc, pixels, length = p["hf"], p["oc"], p["pixels"], p["ids"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(p["sim_oc"](pixels), p["sim_hf"](pixels), rtol=1e-5, atol=1e-6)
    assert isinstance(find_adapter(oc.visual.transformer.resblocks[-1]), MultiheadAttentionAdapter)
    for spatial in ("cosine", "attention"):
        a_hf = ImageGradECLIP(p["sim_hf"], hf.vision_model.encoder.layers[-1], spatial=spatial).attribute_all(pixels)
        a_oc = ImageGradECLIP(p["sim_oc"], oc.visual.transformer.resblocks[-1], spatial=spatial).attribute_all(pixels)
        assert a_hf.shape == a_oc.shape == (1, len(p["texts"]), 8, 8)
        _close_to(a_oc, a_hf)
    w_hf = TextGradECLIP(p["tsim_hf"], list(hf.text_model.encoder.layers)).attribute(
        p["ids"], target=0, additional_forward_args=(p["mask"],))
    w_oc = TextGradECLIP(p["tsim_oc"], list(oc.transformer.resblocks)).attribute(p["oc_ids"], target=0)
    assert w_oc[:, length:].eq(0).all()
    _close_to(w_oc[:, :length], w_hf)


@pytest.mark.parametrize("name", ["CLSAttention", "AttentionRollout", "TokenGradCAM", "GAME", "MaskCLIP"])
def test_baselines_agree_across_layouts(name, shapes_pair):
    """The adapter-based baselines read the same q, k, v and o through either adapter."""
    from captum_gradeclip import baselines

    p = shapes_pair
    cls = getattr(baselines, name)
    multi = name in ("AttentionRollout", "GAME")
    hf_layers = list(p["hf"].vision_model.encoder.layers)
    oc_layers = list(p["oc"].visual.transformer.resblocks)
    a_hf = cls(p["sim_hf"], hf_layers if multi else hf_layers[-1]).attribute_all(p["pixels"])
    a_oc = cls(p["sim_oc"], oc_layers if multi else oc_layers[-1]).attribute_all(p["pixels"])
    _close_to(a_oc, a_hf)


@pytest.mark.parametrize("name", ["TextAttention", "TextRollout", "TextGAME"])
def test_text_baselines_agree_across_layouts(name, shapes_pair):
    from captum_gradeclip import baselines

    p = shapes_pair
    cls = getattr(baselines, name)
    layers_hf, layers_oc = list(p["hf"].text_model.encoder.layers), list(p["oc"].transformer.resblocks)
    w_hf = cls(p["tsim_hf"], layers_hf).attribute(p["ids"], target=0, additional_forward_args=(p["mask"],))
    w_oc = cls(p["tsim_oc"], layers_oc).attribute(p["oc_ids"], target=0)
    _close_to(w_oc[:, :p["ids"].shape[1]], w_hf)


def test_baselines_on_a_resnet_tower(pixels):
    from captum_gradeclip import baselines

    model = tiny("resnet")
    x = torch.randn(1, 3, 64, 64)
    sim = EncoderImageTextSimilarity(model, tokens())
    pool = model.visual.attnpool
    for cls in (baselines.CLSAttention, baselines.GAME, baselines.MaskCLIP):
        a = cls(sim, pool).attribute(x, target=0)
        assert a.shape == (1, 1, 2, 2) and torch.isfinite(a).all() and a.abs().sum() > 0
    with torch.no_grad():  # MaskCLIP on an attention pool: each position's value through c_proj
        feats = []
        h = pool.register_forward_pre_hook(lambda m, a: feats.append(a[0]))
        model.visual(x)
        h.remove()
        t = feats[0].flatten(2).transpose(1, 2) + pool.positional_embedding[1:]
        y = torch.nn.functional.normalize(pool.c_proj(pool.v_proj(t)), dim=-1)
        ref = (y @ sim.text_embeds[0]).view(1, 1, 2, 2)
    torch.testing.assert_close(baselines.MaskCLIP(sim, pool).attribute(x, target=0), ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="TokenGradCAM needs a transformer block"):
        baselines.TokenGradCAM(sim, pool).attribute(x, target=0)


def test_logit_bias_is_part_of_the_logits(pixels):
    """SigLIP-style open_clip models add a logit bias: logits=True includes it (the map is
    unchanged: a constant has no gradient)."""
    from open_clip.model import CLIP

    plain = tiny()
    biased = CLIP(embed_dim=16, vision_cfg=dict(layers=2, width=32, head_width=8, patch_size=8, image_size=32),
                  text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=4, layers=3),
                  init_logit_bias=-3.0).eval()
    missing, unexpected = biased.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["logit_bias"] and not unexpected
    with torch.enable_grad():
        img, txt, scale, bias = biased(pixels, tokens())
        own = scale * img @ txt.t() + bias
        sim = EncoderImageTextSimilarity(biased, tokens(), logits=True)
        assert torch.equal(sim(pixels), own)
    plain_sim = EncoderImageTextSimilarity(plain, tokens(), logits=True)
    torch.testing.assert_close(ImageGradECLIP(sim, biased.visual.transformer.resblocks[-1]).attribute_all(pixels),
                               ImageGradECLIP(plain_sim, plain.visual.transformer.resblocks[-1]).attribute_all(pixels))
