"""The Captum contract: target conventions, attribute_all, and Captum's own tools on our maps."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from captum.attr import (
    GradientAttribution,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    LayerIntegratedGradients,
)
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from conftest import tiny_clip

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity


@pytest.fixture
def setup(pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
    return model, sim, pixels, ids, mask


def test_is_a_captum_layer_attribution(setup):
    model, sim, pixels, ids, mask = setup
    g = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1])
    assert isinstance(g, LayerAttribution) and isinstance(g, GradientAttribution)
    assert g.has_convergence_delta() is False
    assert g.multiplies_by_inputs is False
    assert g.layer is model.vision_model.encoder.layers[-1]


def test_block_and_self_attn_give_the_same_map(setup, monkeypatch):
    # a block takes the pooled-row shortcut for dS/do (block_tail.py); its attention alone takes
    # the full backward: the same numbers up to float rounding
    from captum_gradeclip._core.block_tail import BlockTail

    calls = []
    original = BlockTail.pooled_o_grad
    monkeypatch.setattr(BlockTail, "pooled_o_grad", lambda *a: calls.append(1) or original(*a))
    model, sim, pixels, *_ = setup
    block = model.vision_model.encoder.layers[-1]
    a = ImageGradECLIP(sim, block).attribute(pixels, target=0)
    b = ImageGradECLIP(sim, block.self_attn).attribute(pixels, target=0)
    assert len(calls) == 1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    a_all = ImageGradECLIP(sim, block).attribute_all(pixels)
    b_all = ImageGradECLIP(sim, block.self_attn).attribute_all(pixels)
    assert len(calls) == 2
    torch.testing.assert_close(a_all, b_all, rtol=1e-5, atol=1e-7)


def test_shortcut_falls_back_when_other_rows_matter(setup, monkeypatch):
    # the first block's output feeds every token of the next block: the shortcut must not apply
    from captum_gradeclip._core.block_tail import BlockTail

    results = []
    original = BlockTail.pooled_o_grad
    monkeypatch.setattr(BlockTail, "pooled_o_grad", lambda *a: results.append(original(*a)) or results[-1])
    model, sim, pixels, *_ = setup
    first = model.vision_model.encoder.layers[0]
    a = ImageGradECLIP(sim, first).attribute(pixels, target=0)
    b = ImageGradECLIP(sim, first.self_attn).attribute(pixels, target=0)
    assert results == [None]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_target_conventions_agree(setup):
    model, sim, pixels, *_ = setup
    g = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1])
    per_example = g.attribute(pixels, target=[2, 0])
    as_tensor = g.attribute(pixels, target=torch.tensor([2, 0]))
    torch.testing.assert_close(per_example, as_tensor)
    torch.testing.assert_close(per_example[0], g.attribute(pixels, target=2)[0])
    torch.testing.assert_close(per_example[1], g.attribute(pixels, target=0)[1])
    torch.testing.assert_close(g.attribute(pixels, target=torch.tensor(1)), g.attribute(pixels, target=1))


def test_attribute_all_equals_per_target_loop(setup):
    model, sim, pixels, *_ = setup
    g = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1])
    all_maps = g.attribute_all(pixels)
    assert all_maps.shape == (2, 3, 4, 4)
    for t in range(3):
        torch.testing.assert_close(all_maps[:, t:t + 1], g.attribute(pixels, target=t), rtol=1e-5, atol=1e-7)


def test_text_attribute_all_equals_loop(pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    g = TextGradECLIP(tsim, list(model.text_model.encoder.layers))
    all_maps = g.attribute_all(ids, additional_forward_args=(mask,))
    assert all_maps.shape == (3, 2, 6)
    for n in range(2):
        torch.testing.assert_close(all_maps[:, n], g.attribute(ids, target=n, additional_forward_args=(mask,)),
                                   rtol=1e-5, atol=1e-7)


def test_text_map_zero_at_sos_eos_and_padding(pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    w = TextGradECLIP(tsim, list(model.text_model.encoder.layers), spatial="uniform").attribute(
        ids, target=0, additional_forward_args=(mask,), relu_attributions=False)
    eos = (ids == 49).int().argmax(1)
    for t in range(3):
        assert w[t, 0] == 0 and (w[t, eos[t]:] == 0).all()
        assert (w[t, 1:eos[t]] != 0).all()


def test_non_square_image_grid(texts):
    model = tiny_clip()
    ids, mask = texts
    sim = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask, interpolate_pos_encoding=True)
    x = torch.randn(1, 3, 32, 48)
    a = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(x, target=0)
    assert a.shape == (1, 1, 4, 6)


def test_captum_methods_on_the_same_forward(setup):
    model, sim, pixels, ids, mask = setup
    gc = LayerGradCam(sim, model.vision_model.encoder.layers[-2]).attribute(pixels, target=1)
    assert gc.shape[0] == 2
    ig = IntegratedGradients(sim).attribute(pixels, target=1, n_steps=8)
    assert ig.shape == pixels.shape and torch.isfinite(ig).all()
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    lig = LayerIntegratedGradients(tsim, model.text_model.embeddings).attribute(
        ids, target=0, additional_forward_args=(mask,), n_steps=8)
    assert lig.shape == (*ids.shape, 32)


def test_interpolate_and_visualize_image(setup):
    model, sim, pixels, *_ = setup
    attr = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(pixels, target=0)
    heat = LayerAttribution.interpolate(attr, pixels.shape[-2:])
    assert heat.shape == (2, 1, 32, 32)
    img = (pixels[0] - pixels[0].min()) / (pixels[0].max() - pixels[0].min())
    fig, ax = viz.visualize_image_attr(heat[0].permute(1, 2, 0).numpy(), img.permute(1, 2, 0).numpy(),
                                       method="blended_heat_map", sign="positive", use_pyplot=False)
    assert fig is not None and ax is not None


def test_visualize_text_record(pixels, texts):
    model = tiny_clip()
    ids, mask = texts
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    w = TextGradECLIP(tsim, list(model.text_model.encoder.layers)).attribute(
        ids, target=0, additional_forward_args=(mask,))
    record = viz.VisualizationDataRecord(w[1, 1:5] / w[1].max().clamp_min(1e-12), float(tsim(ids, mask)[1, 0].detach()),
                                         "image 0", "image 0", "image 0", float(w[1].sum()),
                                         ["w1", "w2", "w3", "w4"], None)
    html = viz.visualize_text([record])
    assert "w3" in html.data


def test_captum_infidelity_and_sensitivity(setup):
    model, sim, pixels, *_ = setup
    g = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1])

    def explain(x, target):
        return LayerAttribution.interpolate(g.attribute(x, target=target), x.shape[-2:]).expand_as(x)

    def perturb(x):
        noise = 0.05 * torch.randn_like(x)
        return noise, x - noise

    attr = explain(pixels, 1)
    inf = infidelity(sim, perturb, pixels, attr, target=1, n_perturb_samples=4)
    assert inf.shape == (2,) and torch.isfinite(inf).all()
    # sensitivity_max passes a tuple of inputs and (captum 0.9) expects a tuple back
    sens = sensitivity_max(lambda x, target: (g.attribute(x, target=target),), pixels, target=1,
                           n_perturb_samples=3)
    assert sens.shape == (2,) and torch.isfinite(sens).all()


def test_all_zero_map_is_drawn_not_crashed():
    """Captum refuses to scale an all-zero map; ours shows the image alone and says so (a text
    the image does not match at all gives such a map after the ReLU)."""
    from captum_gradeclip.visualization import visualize_image_attr

    image = torch.rand(3, 16, 16)
    fig, ax = visualize_image_attr(torch.zeros(1, 1, 4, 4), image, title="a dog")
    assert ax.get_title() == "a dog (map is all zero)" and fig is ax.figure
    fig, ax = visualize_image_attr(torch.rand(1, 1, 4, 4), image, title="a dog")
    assert ax.get_title() == "a dog"
