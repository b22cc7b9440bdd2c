"""Bad input and shared use, as a hostile-but-fair user tries them: every case ends in a clear,
typed error before any wrong number is returned, or in the right map (issue: trustworthy numbers
and hardened edges)."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import BOS, EOS, hook_count, text_batch, tiny_clip
from openai_layout import OpenAICLIP, tokens

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity
from captum_gradeclip.openai import EncoderImageTextSimilarity


@pytest.fixture(scope="module")
def model():
    return tiny_clip()


@pytest.fixture(scope="module")
def sim(model):
    ids, mask = text_batch()
    return ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)


def _pixels(n=2):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused(model, sim, bad):
    px = _pixels()
    px[1, 0, 3, 3] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf values \(examples \[1\]\)"):
        ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(px, target=0)
    assert hook_count(model) == 0


def test_all_zero_text_mask_is_refused(model):
    tsim = TextImageSimilarity(model, pixel_values=_pixels())
    ids, mask = text_batch()
    mask[1] = 0
    for spatial in ("cosine", "attention"):
        g = TextGradECLIP(tsim, list(model.text_model.encoder.layers[-2:]), spatial=spatial)
        with pytest.raises(ValueError, match=r"example\(s\) \[1\] the pooled token may attend to no token"):
            g.attribute(ids, target=0, additional_forward_args=(mask,))


def test_a_layer_passed_twice_is_refused(model, sim):
    last = model.vision_model.encoder.layers[-1]
    with pytest.raises(ValueError, match="layers 0 and 1 are the same attention module"):
        ImageGradECLIP(sim, [last, last.self_attn])


def test_left_padded_texts_attribute_nothing_to_pad_and_sos(model):
    tsim = TextImageSimilarity(model, pixel_values=_pixels())
    ids = torch.tensor([[0, 0, BOS, 5, 6, EOS], [BOS, 7, 8, 9, 10, EOS]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    g = TextGradECLIP(tsim, list(model.text_model.encoder.layers[-2:]))
    signed = g.attribute(ids, target=0, additional_forward_args=(mask,), relu_attributions=False)
    assert signed[0, :3].eq(0).all() and signed[0, 5] == 0  # pad, pad, SOS ... EOS
    assert signed[0, 3:5].ne(0).all()  # the two words
    # the right-padded text of the same batch is unaffected by the other's padding
    alone = g.attribute(ids[1:], target=0, additional_forward_args=(mask[1:],), relu_attributions=False)
    torch.testing.assert_close(signed[1], alone[0])


def test_embeddings_that_cannot_be_matched_are_refused(model):
    with pytest.raises(ValueError, match="rows \\[1\\] are zero or not finite"):
        ImageTextSimilarity(model, text_embeds=torch.stack([torch.ones(16), torch.zeros(16)]))
    with pytest.raises(ValueError, match="rows \\[0\\] are zero or not finite"):
        ImageTextSimilarity(model, text_embeds=torch.full((1, 16), float("nan")))
    with pytest.raises(ValueError, match="width 8, but the model's joint embedding has E = 16"):
        ImageTextSimilarity(model, text_embeds=torch.ones(2, 8))
    with pytest.raises(ValueError, match="image_embeds rows \\[0\\]"):
        TextImageSimilarity(model, image_embeds=torch.zeros(1, 16))


def test_ids_outside_the_vocabulary_are_refused(model):
    ids = torch.tensor([[BOS, 5, 77, EOS]])
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 50\)"):
        ImageTextSimilarity(model, input_ids=ids)
    tsim = TextImageSimilarity(model, pixel_values=_pixels())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TextGradECLIP(tsim, model.text_model.encoder.layers[-1]).attribute(ids, target=0)


def test_patch_size_that_disagrees_with_the_layer_is_refused(model, sim):
    layer = model.vision_model.encoder.layers[-1]
    for p in (16, 4):  # too few / too many patches for the 17 tokens of a 32 px, patch-8 tower
        with pytest.raises(ValueError, match="is patch_size right"):
            ImageGradECLIP(sim, layer, patch_size=p).attribute(_pixels(), target=0)
    assert ImageGradECLIP(sim, layer, patch_size=8).attribute(_pixels(), target=0).shape == (2, 1, 4, 4)


@pytest.mark.parametrize("target, err", [
    (torch.tensor([0.0, 1.0]), TypeError), (torch.tensor([True, False]), TypeError),
    ([0, True], TypeError), ([0, 1.5], TypeError), (torch.tensor([[0], [1]]), ValueError),
])
def test_targets_of_the_wrong_type(model, sim, target, err):
    with pytest.raises(err, match="target"):
        ImageGradECLIP(sim, model.vision_model.encoder.layers[-1]).attribute(_pixels(), target=target)


def test_negative_targets_index_from_the_end(model, sim):
    g = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1])
    px = _pixels()
    want = g.attribute(px, target=[2, 0])
    for t in ([-1, 0], [2, -3], torch.tensor([-1, -3])):
        assert torch.equal(g.attribute(px, target=t), want)


def test_a_whole_model_is_not_a_forward_function(model):
    with pytest.raises(TypeError, match="ImageTextSimilarity"):
        ImageGradECLIP(model, model.vision_model.encoder.layers[-1])
    oc = OpenAICLIP()
    with pytest.raises(TypeError, match="EncoderImageTextSimilarity"):
        ImageGradECLIP(oc, oc.visual.transformer.resblocks[-1])


def test_inference_mode_says_so(model, sim):
    g = ImageGradECLIP(sim, model.vision_model.encoder.layers[-1])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        g.attribute(_pixels(), target=0)


@pytest.mark.parametrize("layout", ["hf", "mha"])
def test_one_explainer_shared_by_threads(layout):
    """Two threads hammer one explainer: every map equals the sequential one, no spurious errors,
    no hook left, PyTorch's process-wide MHA fast-path switch restored."""
    if layout == "hf":
        model = tiny_clip()
        ids, mask = text_batch()
        s = ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)
        g = ImageGradECLIP(s, model.vision_model.encoder.layers[-1])
    else:
        model = OpenAICLIP(batch_first=True).eval()
        s = EncoderImageTextSimilarity(model, tokens())
        g = ImageGradECLIP(s, model.visual.transformer.resblocks[-1])
    inputs = [_pixels() * (1 + 0.1 * i) for i in range(6)]
    want = [g.attribute(x, target=i % 3) for i, x in enumerate(inputs)]
    got, errors = {}, []

    def work(offset):
        try:
            for r in range(4):
                for i in range(offset, len(inputs), 2):
                    got[(i, r)] = g.attribute(inputs[i], target=i % 3)
        except Exception as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(o,)) for o in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 4 * len(inputs)
    for (i, _), m in got.items():
        assert torch.equal(m, want[i])
    assert hook_count(model) == 0
    if hasattr(torch.backends, "mha"):
        assert torch.backends.mha.get_fastpath_enabled()
