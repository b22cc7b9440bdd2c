"""Every baseline runs on a tiny random CLIP and has the right shape; hand checks where cheap."""

import pytest
import torch
from conftest import hook_count, text_batch, tiny_clip

from captum_gradeclip import ImageTextSimilarity, TextImageSimilarity
from captum_gradeclip.baselines import (
    GAME,
    RISE,
    AttentionRollout,
    CLSAttention,
    MaskCLIP,
    TextAttention,
    TextGAME,
    TextRollout,
    TokenGradCAM,
    full_attention,
)


@pytest.fixture
def setup(pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    return model, ImageTextSimilarity(model, input_ids=ids, attention_mask=mask), pixels, ids, mask


@pytest.mark.parametrize("cls, which", [(CLSAttention, "last"), (AttentionRollout, "all"), (GAME, "all"),
                                        (TokenGradCAM, "last"), (MaskCLIP, "last")])
def test_image_baselines_shape_and_all_targets(setup, cls, which):
    model, sim, pixels, *_ = setup
    layers = list(model.vision_model.encoder.layers)
    g = cls(sim, layers[-1] if which == "last" else layers)
    a = g.attribute(pixels, target=1)
    assert a.shape == (2, 1, 4, 4) and torch.isfinite(a).all() and a.abs().sum() > 0
    all_maps = g.attribute_all(pixels)
    assert all_maps.shape == (2, 3, 4, 4)
    torch.testing.assert_close(all_maps[:, 1:2], a, rtol=1e-5, atol=1e-7)
    assert hook_count(model) == 0


def test_cls_attention_is_the_softmax_row(setup):
    model, sim, pixels, *_ = setup
    attn = model.vision_model.encoder.layers[-1].self_attn
    got = CLSAttention(sim, attn).attribute(pixels, target=0)
    # reference: the eager backend's own attention weights (the tiny model is eager)
    probs = {}

    def keep(module, args, out):
        probs["w"] = out[1]

    h = attn.register_forward_hook(keep)
    try:
        with torch.no_grad():
            model.get_image_features(pixel_values=pixels)
    finally:
        h.remove()
    assert probs["w"] is not None
    ref = probs["w"].mean(1)[:, 0, 1:].reshape(2, 1, 4, 4)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_rollout_rows_sum_to_one(setup):
    model, sim, pixels, *_ = setup
    g = AttentionRollout(sim, list(model.vision_model.encoder.layers))
    a = g.attribute(pixels, target=0)
    # CLS row of a product of row-stochastic matrices: patches + CLS sum to 1
    assert (a.flatten(1).sum(1) < 1).all() and (a >= 0).all()


def test_text_baselines(pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    layers = list(model.text_model.encoder.layers)
    for cls, lay in ((TextAttention, layers[-1]), (TextRollout, layers), (TextGAME, layers)):
        w = cls(tsim, lay).attribute(ids, target=1, additional_forward_args=(mask,))
        assert w.shape == ids.shape and torch.isfinite(w).all()
        eos = (ids == 49).int().argmax(1)
        for t in range(3):
            assert w[t, 0] == 0 and (w[t, eos[t]:] == 0).all()


def test_rise_shape_and_determinism(setup):
    model, sim, pixels, *_ = setup
    r = RISE(sim, n_masks=40, grid=4, batch_size=16, seed=3)
    a, b = r.attribute(pixels, target=1), r.attribute(pixels, target=1)
    assert a.shape == (2, 1, 32, 32) and torch.equal(a, b)


def test_full_attention_rows_are_distributions(setup):
    model, sim, pixels, *_ = setup
    from captum_gradeclip import ImageGradECLIP

    seen = {}

    class Probe(ImageGradECLIP):
        def combine(self, layers, **kw):
            seen["a"] = full_attention(layers[-1])
            return super().combine(layers, **kw)

    Probe(sim, model.vision_model.encoder.layers[-1]).attribute(pixels, target=0)
    torch.testing.assert_close(seen["a"].sum(-1), torch.ones(2, 4, 17))
