"""Bad input: typed errors that say what was received and what was expected."""

import pytest
import torch
from conftest import BOS, EOS, hook_count, text_batch, tiny_clip
from torch import nn

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity


@pytest.fixture
def sim(pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    return model, ImageTextSimilarity(model, input_ids=ids, attention_mask=mask)


def test_layer_without_attention_lists_children(sim):
    model, s = sim
    with pytest.raises(TypeError, match=r"no supported attention found in CLIPMLP \(children: .*fc1: Linear, fc2: Linear"):
        ImageGradECLIP(s, model.vision_model.encoder.layers[-1].mlp)
    with pytest.raises(TypeError, match="register_adapter"):
        ImageGradECLIP(s, nn.Linear(2, 2))


def test_layer_with_several_attentions(sim):
    model, s = sim
    with pytest.raises(ValueError, match="holds 2 attention modules"):
        ImageGradECLIP(s, model.vision_model.encoder)


def test_bad_constructor_arguments(sim):
    model, s = sim
    with pytest.raises(ValueError, match="spatial must be one of"):
        ImageGradECLIP(s, model.vision_model.encoder.layers[-1], spatial="softmax")
    with pytest.raises(ValueError, match="empty list"):
        ImageGradECLIP(s, [])


@pytest.mark.parametrize("target, err, msg", [
    (3, IndexError, r"target 3 is out of range.*3 score\(s\).*\[0, 2\]"),
    ([0, 5], IndexError, "target 5 is out of range"),
    ([0], ValueError, r"one entry per example \(2\), got 1"),
    (torch.tensor([0, 1, 2]), ValueError, r"shape \(2,\)"),
    (None, ValueError, "target is required"),
    ("1", TypeError, "target must be"),
])
def test_bad_targets(sim, pixels, target, err, msg):
    model, s = sim
    with pytest.raises(err, match=msg):
        ImageGradECLIP(s, model.vision_model.encoder.layers[-1]).attribute(pixels, target=target)
    assert hook_count(model) == 0


def test_wrong_rank_and_size(sim, pixels):
    model, s = sim
    g = ImageGradECLIP(s, model.vision_model.encoder.layers[-1])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got a tensor of rank 3"):
        g.attribute(pixels[0], target=0)
    with pytest.raises(ValueError, match=r"not a multiple of the patch size 8"):
        g.attribute(torch.randn(1, 3, 30, 32), target=0)
    with pytest.raises(ValueError, match="empty batch"):
        g.attribute(pixels[:0], target=0)


def test_layer_of_the_other_tower(sim, pixels):
    model, s = sim
    with pytest.raises(ValueError, match="ran 0 times"):
        ImageGradECLIP(s, model.text_model.encoder.layers[-1]).attribute(pixels, target=0)
    assert hook_count(model) == 0


def test_text_errors(pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    g = TextGradECLIP(tsim, list(model.text_model.encoder.layers))
    no_eos = torch.tensor([[BOS, 5, 6, 7]])
    with pytest.raises(ValueError, match=r"text\(s\) \[0\] have no EOS token \(id 49\)"):
        g.attribute(no_eos, target=0)
    with pytest.raises(ValueError, match=r"\(T, L\), got a tensor of rank 1"):
        g.attribute(ids[0], target=0)
    with pytest.raises(ValueError, match="empty batch"):
        g.attribute(ids[:0], target=0)
    with pytest.raises(TypeError, match="integer token ids"):
        g.attribute(ids.float(), target=0)
    with pytest.raises(ValueError, match=r"attention_mask \(3, 5\) must have the shape of input_ids \(3, 6\)"):
        g.attribute(ids, target=0, additional_forward_args=(mask[:, :5],))
    assert hook_count(model) == 0


def test_similarity_constructor_errors(pixels):
    model = tiny_clip()
    ids, mask = text_batch()
    with pytest.raises(ValueError, match=r"T >= 1"):
        ImageTextSimilarity(model, input_ids=ids[:0])
    with pytest.raises(ValueError, match="must have the shape of input_ids"):
        ImageTextSimilarity(model, input_ids=ids, attention_mask=mask[:2])
    with pytest.raises(ValueError, match="have no EOS token"):
        ImageTextSimilarity(model, input_ids=torch.tensor([[BOS, 3, 4]]))
    with pytest.raises(ValueError, match=r"N >= 1"):
        TextImageSimilarity(model, pixel_values=pixels[:0])
    with pytest.raises(TypeError, match="has no 'get_image_features'"):
        ImageTextSimilarity(nn.Linear(2, 2), input_ids=ids)


def test_legacy_eos_id_pools_at_argmax(pixels):
    # configs with eos_token_id == 2 pool at the argmax of the ids: the map follows the model
    model = tiny_clip(eos_token_id=2)
    ids = torch.tensor([[BOS, 5, EOS, 3]])
    tsim = TextImageSimilarity(model, pixel_values=pixels)
    w = TextGradECLIP(tsim, list(model.text_model.encoder.layers), spatial="uniform").attribute(
        ids, target=0, relu_attributions=False)
    assert w[0, 1] != 0 and (w[0, 2:] == 0).all()
    assert EOS > 2
