"""Model families beyond CLIP: HF ViT / DeiT classifiers (5.x and 4.x attention naming), SigLIP
(the probe of the attention-pooling head), BLIP's contrastive branch. Against line-by-line
references (family_references.py), the model's own score, no side effects, attribute_all."""

import pytest
import torch
from conftest import hook_count
from family_references import blip_vision_reference, siglip_head_reference, vit_classifier_reference
from torch import nn
from transformers import (
    BlipConfig,
    BlipForImageTextRetrieval,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    SiglipConfig,
    SiglipModel,
    ViTConfig,
    ViTForImageClassification,
)

from captum_gradeclip import ImageGradECLIP, TextGradECLIP
from captum_gradeclip.adapters import FusedQKVLinearAdapter, SeparateQKVAdapter, find_adapter
from captum_gradeclip.families import (
    BlipImageTextSimilarity,
    BlipTextImageSimilarity,
    ImageClassifierLogits,
    SiglipImageTextSimilarity,
    SiglipTextImageSimilarity,
)

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def vit(attn="eager", seed=0):
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**SMALL, image_size=32, patch_size=8, num_labels=5,
                                               attn_implementation=attn)).eval()


def deit(seed=0):
    torch.manual_seed(seed)
    return DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL, image_size=32, patch_size=8, num_labels=5)).eval()


def siglip(seed=0):
    torch.manual_seed(seed)
    cfg = SiglipConfig(text_config=dict(**SMALL, vocab_size=50, max_position_embeddings=16, projection_size=32,
                                        bos_token_id=None, eos_token_id=None, pad_token_id=1),
                       vision_config=dict(**SMALL, image_size=32, patch_size=8))
    return SiglipModel(cfg).eval()


def blip(seed=0):
    torch.manual_seed(seed)
    cfg = BlipConfig(text_config=dict(**SMALL, vocab_size=120, max_position_embeddings=16, encoder_hidden_size=32,
                                      sep_token_id=102, bos_token_id=101, pad_token_id=0, initializer_range=0.05),
                     vision_config=dict(**SMALL, image_size=32, patch_size=8, initializer_range=0.05),
                     image_text_hidden_size=16)  # BLIP's vision init (std 1e-10) would make every map ~0
    return BlipForImageTextRetrieval(cfg).eval()


@pytest.fixture
def px():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


def state(model):
    return ({n: p.requires_grad for n, p in model.named_parameters()},
            {n: m.training for n, m in model.named_modules()}, hook_count(model),
            [n for n, p in model.named_parameters() if p.grad is not None])


def close(a, b):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-6 * float(b.abs().max()) + 1e-12, rtol=1e-4), (a - b).abs().max()


class Spy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.outputs = inner, []
        for name in ("patch_size", "pooled_token", "image_pool", "image_layout", "text_layout", "eos_positions"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def forward(self, *args):
        out = self.inner(*args)
        self.outputs.append(out.detach().clone())
        return out


# ---- ViT / DeiT classifiers -----------------------------------------------------------------

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_vit_classifier_matches_reference_and_its_own_logits(attn, px):
    model = vit(attn)
    fn = Spy(ImageClassifierLogits(model))
    assert isinstance(find_adapter(model.vit.layers[-1]), SeparateQKVAdapter)
    before = state(model)
    maps = ImageGradECLIP(fn, model.vit.layers[-1]).attribute(px, target=[3, 1])
    ref = torch.cat([vit_classifier_reference(model, model.vit, px[i:i + 1], t, extra=1)
                     for i, t in enumerate([3, 1])])
    close(maps.flatten(1), ref)
    with torch.no_grad():
        assert torch.equal(fn.outputs[0], model(pixel_values=px).logits)
    assert state(model) == before
    every = ImageGradECLIP(fn, model.vit.layers[-1]).attribute_all(px)
    assert every.shape == (2, 5, 4, 4)
    for k in range(5):
        close(every[:, k:k + 1], ImageGradECLIP(fn, model.vit.layers[-1]).attribute(px, target=k))


def test_vit_classifier_captum_target_conventions(px):
    model = vit()
    g = ImageGradECLIP(ImageClassifierLogits(model), model.vit.layers[-1])
    a = g.attribute(px, target=2)
    assert torch.equal(a, g.attribute(px, target=torch.tensor([2, 2])))
    assert torch.equal(a, g.attribute(px, target=-3))
    with pytest.raises(IndexError, match="out of range"):
        g.attribute(px, target=5)
    with pytest.raises(ValueError, match="target is required"):
        g.attribute(px)


def test_deit_with_teacher_heads_pool_their_own_token(px):
    model = deit()
    for head, pooled in (("cls", 0), ("distillation", 1)):
        fn = ImageClassifierLogits(model, head=head)
        assert fn.pooled_token == pooled
        maps = ImageGradECLIP(fn, model.deit.layers[-1]).attribute(px[:1], target=2)
        ref = vit_classifier_reference(model, model.deit, px[:1], 2, extra=2, pooled=pooled, head=head)
        close(maps.flatten(1), ref)
    with pytest.raises(ValueError, match="head='cls' or head='distillation'"):
        ImageClassifierLogits(model)
    with pytest.raises(ValueError, match="head= is for"):
        ImageClassifierLogits(vit(), head="cls")


class _SelfAttention4x(nn.Module):
    """transformers 4.x ``ViTSelfAttention``: query / key / value, returns (context, probs)."""

    def __init__(self, src):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = src.num_attention_heads, src.head_dim
        self.query, self.key, self.value = src.q_proj, src.k_proj, src.v_proj

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        b, n, d = hidden_states.shape
        shape = (b, n, self.num_attention_heads, self.attention_head_size)
        q, k, v = (lin(hidden_states).view(shape).transpose(1, 2) for lin in (self.query, self.key, self.value))
        probs = (q @ k.transpose(-1, -2) / self.attention_head_size ** 0.5).softmax(-1)
        return ((probs @ v).transpose(1, 2).reshape(b, n, d), probs)


class _Attention4x(nn.Module):
    """transformers 4.x ``ViTAttention``: ``attention`` (self-attention) + ``output.dense``."""

    def __init__(self, src):
        super().__init__()
        self.attention = _SelfAttention4x(src)
        self.output = nn.Module()
        self.output.dense = src.o_proj

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        context, probs = self.attention(hidden_states, head_mask, output_attentions)
        return (self.output.dense(context), probs)


class _Layer4x(nn.Module):
    def __init__(self, src):
        super().__init__()
        self.attention = _Attention4x(src.attention)
        self.layernorm_before, self.layernorm_after, self.mlp = src.layernorm_before, src.layernorm_after, src.mlp

    def forward(self, hidden_states, head_mask=None):
        h = self.attention(self.layernorm_before(hidden_states), head_mask)[0] + hidden_states
        return self.mlp(self.layernorm_after(h)) + h


def test_vit_4x_attention_naming_gives_the_same_map(px):
    model = vit()
    layers4 = nn.ModuleList([_Layer4x(layer) for layer in model.vit.layers])

    def logits4(pixel_values):
        x = model.vit.embeddings(pixel_values)
        for layer in layers4:
            x = layer(x, None)  # 4.x passes head_mask positionally: not a mask
        return model.classifier(model.vit.layernorm(x)[:, 0])

    with torch.no_grad():
        assert torch.allclose(logits4(px), model(pixel_values=px).logits, atol=1e-6)
    assert isinstance(find_adapter(layers4[-1]), SeparateQKVAdapter)
    new = ImageGradECLIP(ImageClassifierLogits(model), model.vit.layers[-1]).attribute_all(px)
    old = ImageGradECLIP(logits4, layers4[-1], patch_size=8).attribute_all(px)
    close(old, new)
    assert hook_count(layers4) == 0


def test_classifier_errors(px):
    with pytest.raises(TypeError, match="not a supported classifier"):
        ImageClassifierLogits(nn.Linear(3, 3))
    model = vit()

    def failing(x):
        model(pixel_values=x)
        raise RuntimeError("boom")

    before = state(model)
    with pytest.raises(RuntimeError, match="boom"):
        ImageGradECLIP(failing, model.vit.layers[-1], patch_size=8).attribute(px, target=0)
    assert state(model) == before


# ---- SigLIP ---------------------------------------------------------------------------------

def test_siglip_probe_matches_reference_and_its_own_logits(px):
    model = siglip()
    ids = torch.randint(2, 50, (3, 8))
    fn = Spy(SiglipImageTextSimilarity(model, ids))
    before = state(model)
    maps = ImageGradECLIP(fn, model.vision_model.head).attribute(px, target=2)
    close(maps.flatten(1), siglip_head_reference(model, px, fn.inner.text_embeds, 2))
    out = model(input_ids=ids, pixel_values=px)
    assert torch.equal(fn.outputs[0], out.logits_per_image)
    every = ImageGradECLIP(fn, model.vision_model.head).attribute_all(px)
    for k in range(3):
        close(every[:, k:k + 1], ImageGradECLIP(fn, model.vision_model.head).attribute(px, target=k))
    assert state(model) == before
    cos = SiglipImageTextSimilarity(model, ids, logits=False)
    with torch.no_grad():  # the cosine: same order of images, monotone in the logit
        assert torch.allclose(cos(px) * model.logit_scale.exp() + model.logit_bias, out.logits_per_image, atol=1e-5)


def test_siglip_encoder_block_is_refused_with_what_to_pass(px):
    model = siglip()
    fn = SiglipImageTextSimilarity(model, torch.randint(2, 50, (2, 8)))
    with pytest.raises(ValueError, match="model.vision_model.head"):
        ImageGradECLIP(fn, model.vision_model.encoder.layers[-1]).attribute(px, target=0)
    assert hook_count(model) == 0


def test_siglip_probe_layout_validates_like_every_image_layout():
    """ProbeLayout runs ImageLayout's checks (a bad patch_size is refused) while its tower pools no
    token of the encoder (pooled_token None) and its pooled row is the probe, 0."""
    from captum_gradeclip.families.layouts import ProbeLayout

    fn = SiglipImageTextSimilarity(siglip(), torch.randint(2, 50, (2, 8)))
    assert fn.pooled_token is None and ProbeLayout(fn).pooled_token == 0
    for bad in (0, (8,), "8", True):
        with pytest.raises(ValueError, match="patch_size must be a positive int"):
            ProbeLayout(fn, patch_size=bad)


def test_siglip_text_pools_the_last_token(px):
    model = siglip()
    ids = torch.randint(2, 50, (3, 8))
    fn = Spy(SiglipTextImageSimilarity(model, px))
    layers = list(model.text_model.encoder.layers)
    maps = TextGradECLIP(fn, layers).attribute(ids, target=1)
    assert torch.equal(fn.outputs[0], model(input_ids=ids, pixel_values=px).logits_per_text)
    assert maps.shape == (3, 8) and bool((maps[:, -1] == 0).all()) and maps[:, :-1].abs().sum() > 0
    every = TextGradECLIP(fn, layers).attribute_all(ids)
    for k in range(2):
        close(every[:, k], TextGradECLIP(fn, layers).attribute(ids, target=k))


# ---- BLIP -----------------------------------------------------------------------------------

def _blip_texts():
    ids = torch.tensor([[101, 5, 6, 7, 102, 0], [101, 8, 9, 102, 0, 0]])
    return ids, (ids != 0).long()


def test_blip_image_matches_reference_and_its_own_score(px):
    model = blip()
    ids, mask = _blip_texts()
    fn = Spy(BlipImageTextSimilarity(model, ids, mask))
    assert isinstance(find_adapter(model.vision_model.encoder.layers[-1]), FusedQKVLinearAdapter)
    before = state(model)
    maps = ImageGradECLIP(fn, model.vision_model.encoder.layers[-1]).attribute(px, target=1)
    close(maps.flatten(1), blip_vision_reference(model, px, fn.inner.text_feat, 1))
    out = model(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False)
    assert torch.equal(fn.outputs[0], out.itm_score)
    every = ImageGradECLIP(fn, model.vision_model.encoder.layers[-1]).attribute_all(px)
    close(every[:, 1:2], maps)
    assert state(model) == before


def test_blip_text_pools_cls_and_maps_the_words(px):
    model = blip()
    ids, mask = _blip_texts()
    fn = Spy(BlipTextImageSimilarity(model, px))
    layers = [layer.attention for layer in model.text_encoder.encoder.layer]
    before = state(model)
    maps = TextGradECLIP(fn, layers).attribute(ids, target=0, additional_forward_args=(mask,))
    out = model(input_ids=ids, pixel_values=px, attention_mask=mask, use_itm_head=False)
    assert torch.equal(fn.outputs[0], out.itm_score.t())
    words = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert bool((maps[~words] == 0).all()) and bool((maps[words] > 0).any())
    every = TextGradECLIP(fn, layers).attribute_all(ids, additional_forward_args=(mask,))
    for k in range(2):
        close(every[:, k], TextGradECLIP(fn, layers).attribute(ids, target=k, additional_forward_args=(mask,)))
    assert state(model) == before
    with pytest.raises(ValueError, match="crossattention"):
        TextGradECLIP(fn, model.text_encoder.encoder.layer[-1])
    with pytest.raises(ValueError, match="no EOS token"):
        TextGradECLIP(fn, layers).attribute(torch.tensor([[101, 5, 6]]), target=0)


def test_wrong_model_for_a_helper():
    with pytest.raises(TypeError, match="SiglipModel"):
        SiglipImageTextSimilarity(vit(), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="BlipForImageTextRetrieval"):
        BlipTextImageSimilarity(siglip(), torch.zeros(1, 3, 32, 32))


# ---- the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("make, code", [(vit, "ImageClassifierLogits"), (siglip, "SiglipImageTextSimilarity"),
                                        (blip, "BlipImageTextSimilarity")])
def test_explain_model_recognises_the_family(make, code, tmp_path, capsys):
    from PIL import Image

    from captum_gradeclip.cli import main

    make().save_pretrained(tmp_path / "m")
    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(img)
    assert main(["explain", str(img), "--text", "a red circle", "--model", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert code in err and "runs CLIP image-text models only" in err


def test_readme_model_families_block_runs():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    code = re.search(r"```python\n(.*?)```", text.split("# Model families", 1)[1], re.S).group(1)
    lines = [ln for ln in code.splitlines() if "# needs the hub" not in ln]
    scope = {"vit": vit(), "siglip": siglip(), "blip": blip(), "pixel_values": torch.randn(2, 3, 32, 32),
             "input_ids": torch.randint(2, 50, (3, 8))}
    scope["blip_ids"], scope["blip_mask"] = _blip_texts()
    try:
        import timm
        scope.update(timm=timm, net=timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5).eval())
    except ImportError:
        lines = [ln for ln in lines if "net" not in ln]
    exec(compile("\n".join(lines), "docs/families.md", "exec"), scope)
    assert scope["cls_map"].shape == (2, 1, 4, 4) and scope["sig_maps"].shape == (2, 3, 4, 4)
    assert scope["sig_words"].shape == (3, 8) and scope["blip_words"].shape == scope["blip_ids"].shape


def test_clip_helpers_refuse_siglip_with_what_to_use():
    from captum_gradeclip import ImageTextSimilarity

    with pytest.raises(TypeError, match="SiglipImageTextSimilarity"):
        ImageTextSimilarity(siglip(), input_ids=torch.randint(2, 50, (2, 8)))


def test_shipped_shapes_classifier_classifies_and_grad_eclip_points_at_the_object():
    from captum_gradeclip.metrics import pointing_game
    from captum_gradeclip.shapes.classifier import accuracy, class_of, load_shapes_classifier, scenes

    model = load_shapes_classifier()
    assert accuracy(model, n=100, seed0=0) > 0.7
    px, sc = scenes(40, seed0=0)
    target = torch.tensor([class_of(s) for s in sc])
    maps = ImageGradECLIP(ImageClassifierLogits(model), model.vit.layers[-1]).attribute(px, target=target)
    masks = torch.stack([s.masks[0] for s in sc])
    assert float(pointing_game(maps, masks, tolerance=4).float().mean()) > 0.6


def test_single_head_mode_on_the_new_adapters_explains_a_modified_model(px):
    model, bl = vit(), blip()
    ids, mask = _blip_texts()
    with torch.no_grad():  # sharpen the attention: at the default init every head is near uniform
        for w in (model.vit.layers[-1].attention.q_proj.weight, model.vit.layers[-1].attention.k_proj.weight,
                  bl.vision_model.encoder.layers[-1].self_attn.qkv.weight):
            w.mul_(30)
    for fn, layer in ((ImageClassifierLogits(model), model.vit.layers[-1]),
                      (BlipImageTextSimilarity(bl, ids, mask), bl.vision_model.encoder.layers[-1])):
        spy = Spy(fn)
        maps = ImageGradECLIP(spy, layer, single_head=True).attribute(px, target=1)
        with torch.no_grad():
            own = fn(px)
        assert maps.shape == (2, 1, 4, 4) and not torch.allclose(spy.outputs[0], own)
        with torch.no_grad():
            assert torch.equal(fn(px), own)  # the model is back to itself
    assert hook_count(model) == 0 and hook_count(bl) == 0
