"""A hostile-but-fair sweep over the API, the metrics and the command line.

Every case ends in one of two classes, and the test checks which:

- ``ERR``: a clear, typed error (``ValueError``, ``TypeError``, ``IndexError``, a ``RuntimeError``
  that says what to do; on the command line: exit status 2 and one ``captum-gradeclip: error:``
  line, before any work), matched against words that tell the user what was wrong;
- ``OK``: a result the case checks against an independent expectation.

After every API and metric case (success or error) the models are as before: no hook left,
``requires_grad`` and train/eval flags unchanged, PyTorch's MHA fast path on. Anything else (a
silent wrong result, an unclear internal error, a traceback, a state leak) fails the test; cases
that fail in files outside this suite's owner are marked ``xfail(strict=True)`` with what happens.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import BOS, EOS, hook_count, text_batch, tiny_clip
from openai_layout import OpenAICLIP, tokens
from PIL import Image

from captum_gradeclip import ImageGradECLIP, ImageTextSimilarity, TextGradECLIP, TextImageSimilarity
from captum_gradeclip import metrics as M
from captum_gradeclip.baselines import GAME, RISE, AttentionRollout, CLSAttention, MaskCLIP, TokenGradCAM
from captum_gradeclip.openai import EncoderImageTextSimilarity

OK = (None, None)


@functools.lru_cache(None)
def hf():
    return tiny_clip()


@functools.lru_cache(None)
def oc():
    return OpenAICLIP().eval()


def px(n=2, size=32, seed=1):
    torch.manual_seed(seed)
    return torch.randn(n, 3, size, size)


def sim(**kw):
    ids, mask = text_batch()
    return ImageTextSimilarity(hf(), **({"input_ids": ids, "attention_mask": mask} | kw))


def tsim(pixels=None):
    return TextImageSimilarity(hf(), pixel_values=px() if pixels is None else pixels)


def last():
    return hf().vision_model.encoder.layers[-1]


def ge(**kw):
    return ImageGradECLIP(sim(), last(), **kw)


def text_layers(k=2):
    return list(hf().text_model.encoder.layers[-k:])


def _state():
    out = []
    for m in (hf(), oc()):
        out.append((hook_count(m), tuple(p.requires_grad for p in m.parameters()),
                    tuple(x.training for x in m.modules())))
    fast = torch.backends.mha.get_fastpath_enabled() if hasattr(torch.backends, "mha") else True
    return out, fast


API, KNOWN = [], {}


def case(err=None, match=None, *, xfail=None):
    """Register ``fn`` as an API/metric case: ``err`` the error type it must raise (``None``: it
    must return, having checked its own result), ``match`` words the message must hold."""
    def deco(fn):
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        API.append(pytest.param(fn, err, match, id=fn.__name__, marks=marks))
        return fn
    return deco


# ---- image explainer: inputs ------------------------------------------------------------------

def _bad_pixel(value):
    x = px()
    x[1, 0, 2, 2] = value
    ge().attribute(x, target=0)


@case(ValueError, r"NaN or Inf")
def image_nan_pixel():
    _bad_pixel(float("nan"))


@case(ValueError, r"NaN or Inf")
def image_inf_pixel():
    _bad_pixel(float("inf"))


@case(ValueError, r"NaN or Inf")
def image_minus_inf_pixel():
    _bad_pixel(-float("inf"))


@case(RuntimeError, r"3 channels")
def image_one_channel():
    ge().attribute(torch.randn(2, 1, 32, 32), target=0)


@case(ValueError, r"must have shape \(N, C, H, W\), got a tensor of rank 3")
def image_without_batch_dim():
    ge().attribute(torch.randn(3, 32, 32), target=0)


@case(ValueError, r"size|match|interpolate_pos_encoding")
def image_other_size_without_interpolation():
    ge().attribute(torch.randn(1, 3, 40, 40), target=0)


@case()
def image_non_square_with_interpolation():
    s = sim(interpolate_pos_encoding=True)
    a = ImageGradECLIP(s, last()).attribute(torch.randn(1, 3, 32, 48), target=0)
    assert a.shape == (1, 1, 4, 6) and torch.isfinite(a).all()


@case()
def image_input_requiring_grad_keeps_its_flag():
    x = px().requires_grad_(True)
    a = ge().attribute(x, target=0)
    assert x.requires_grad and x.grad is None and a.shape == (2, 1, 4, 4)


@case()
def image_float64_pixels_match_float32():
    x = px()
    torch.testing.assert_close(ge().attribute(x.double(), target=1).float(), ge().attribute(x, target=1),
                               rtol=1e-4, atol=1e-6)


@case()
def image_batch_of_one_equals_row_of_batch():
    x = px(3)
    torch.testing.assert_close(ge().attribute(x[1:2], target=2)[0], ge().attribute(x, target=2)[1],
                               rtol=1e-4, atol=1e-6)


@case(ValueError, r"empty|no image|N = 0|zero")
def image_empty_batch():
    ge().attribute(torch.randn(0, 3, 32, 32), target=0)


@case()
def image_under_no_grad_still_explains():
    with torch.no_grad():
        a = ge().attribute(px(), target=0)
    torch.testing.assert_close(a, ge().attribute(px(), target=0))


@case(RuntimeError, r"inference_mode")
def image_under_inference_mode():
    with torch.inference_mode():
        ge().attribute(px(), target=0)


@case()
def image_frozen_model_stays_frozen():
    m = hf()
    flags = [p.requires_grad for p in m.parameters()]
    for p in m.parameters():
        p.requires_grad_(False)
    try:
        a = ge().attribute(px(), target=0)
        assert not any(p.requires_grad for p in m.parameters()) and a.abs().sum() > 0
    finally:
        for p, f in zip(m.parameters(), flags):
            p.requires_grad_(f)


@case()
def image_train_mode_model_stays_in_train_mode():
    m = hf()
    m.train()
    try:
        ge().attribute(px(), target=0)
        assert all(x.training for x in m.modules())
    finally:
        m.eval()


# ---- image explainer: targets -----------------------------------------------------------------

@case(IndexError, r"target|out of range|range")
def image_target_too_large():
    ge().attribute(px(), target=3)


@case(IndexError, r"target|out of range|range")
def image_target_too_negative():
    ge().attribute(px(), target=-4)


@case()
def image_target_negative_counts_from_end():
    assert torch.equal(ge().attribute(px(), target=-1), ge().attribute(px(), target=2))


@case(ValueError, r"target")
def image_target_list_of_wrong_length():
    ge().attribute(px(), target=[0, 1, 2])


@case(TypeError, r"target")
def image_target_float():
    ge().attribute(px(), target=1.0)


@case(TypeError, r"target")
def image_target_bool_tensor():
    ge().attribute(px(), target=torch.tensor([True, False]))


@case(TypeError, r"target")
def image_target_string():
    ge().attribute(px(), target="a dog")


@case(ValueError, r"target")
def image_target_none_with_several_texts():
    ge().attribute(px(), target=None)


@case()
def image_target_numpy_int():  # numpy integers are integers
    g, x = ge(), px()
    assert torch.equal(g.attribute(x, target=np.int64(1)), g.attribute(x, target=1))
    assert torch.equal(g.attribute(x, target=[np.int32(2), np.int64(0)]), g.attribute(x, target=[2, 0]))


@case(TypeError, r"target must be None, an int, .* got tuple")
def image_target_tuple():
    ge().attribute(px(), target=(0,))


@case()
def image_target_0d_tensor():
    assert torch.equal(ge().attribute(px(), target=torch.tensor(1)), ge().attribute(px(), target=1))


@case()
def image_target_per_example_list():
    x = px()
    a = ge().attribute(x, target=[2, 0])
    assert torch.equal(a[0], ge().attribute(x[:1], target=2)[0]) or torch.allclose(
        a[0], ge().attribute(x[:1], target=2)[0], atol=1e-6)


@case()
def image_attribute_all_equals_each_target():
    g, x = ge(), px()
    allm = g.attribute_all(x)
    for t in range(3):
        torch.testing.assert_close(allm[:, t:t + 1], g.attribute(x, target=t), rtol=1e-4, atol=1e-6)


@case()
def image_relu_map_is_the_clamped_signed_map():
    g, x = ge(), px()
    torch.testing.assert_close(g.attribute(x, target=0),
                               g.attribute(x, target=0, relu_attributions=False).clamp_min(0))


# ---- image explainer: construction ------------------------------------------------------------

@case(ValueError, r"spatial must be one of")
def image_unknown_spatial():
    ge(spatial="cosinus")


@case(ValueError, r"spatial must be one of")
def image_spatial_none():
    ge(spatial=None)


@case(TypeError, r"attention|supported")
def image_layer_without_attention():
    ImageGradECLIP(sim(), hf().vision_model.post_layernorm)


@case(ValueError, r"empty|no layer|at least one")
def image_empty_layer_list():
    ImageGradECLIP(sim(), [])


@case(ValueError, r"same attention module")
def image_layer_twice():
    ImageGradECLIP(sim(), [last(), last()])


@case(ValueError, r"patch_size")
def image_wrong_patch_size():
    ge(patch_size=16).attribute(px(), target=0)


@case(ValueError, r"patch_size must be a positive int")
def image_zero_patch_size():
    ge(patch_size=0).attribute(px(), target=0)


@case(ValueError, r"patch_size must be a positive int")
def image_negative_patch_size():
    ge(patch_size=-8).attribute(px(), target=0)


@case(ValueError, r"ran 0 times during forward_func.*pass a layer of the tower")
def image_layer_of_another_model():
    other = tiny_clip(seed=3)
    ImageGradECLIP(sim(), other.vision_model.encoder.layers[-1]).attribute(px(), target=0)


@case(ValueError, r"ran 0 times during forward_func.*pass a layer of the tower")
def image_explainer_on_a_text_layer():
    ImageGradECLIP(sim(), hf().text_model.encoder.layers[-1]).attribute(px(), target=0)


@case(TypeError, r"ImageTextSimilarity")
def image_raw_clip_model_as_forward():
    ImageGradECLIP(hf(), last())


@case()
def image_lambda_forward_returning_1d():
    s = sim()
    a = ImageGradECLIP(lambda x: s(x)[:, 1], last(), patch_size=8).attribute(px(), target=None)
    torch.testing.assert_close(a, ge().attribute(px(), target=1), rtol=1e-4, atol=1e-6)


@case(ValueError, r"does not depend on the explained layer")
def image_forward_that_detaches_the_score():
    s = sim()
    ImageGradECLIP(lambda x: s(x).detach(), last(), patch_size=8).attribute(px(), target=0)


@case()
def image_score_that_ignores_the_layer_gives_a_zero_map():
    s = sim()
    a = ImageGradECLIP(lambda x: s(x) * 0 + 1, last(), patch_size=8).attribute(px(), target=0)
    assert a.eq(0).all()


@case(ValueError, r"scores of shape \(N,\) or \(N, K\)")
def image_forward_returning_3d():
    s = sim()
    ImageGradECLIP(lambda x: s(x)[:, :, None], last(), patch_size=8).attribute(px(), target=0)


@case(ValueError, r"holds 2 attention modules")
def image_whole_tower_as_layer():
    ImageGradECLIP(sim(), hf().vision_model)


@case(TypeError, r"layer must be a torch.nn.Module")
def image_string_as_layer():
    ImageGradECLIP(sim(), "layers.1")


@case()
def image_module_list_as_layers():
    layers = hf().vision_model.encoder.layers
    torch.testing.assert_close(ImageGradECLIP(sim(), layers).attribute(px(), target=0),
                               ImageGradECLIP(sim(), list(layers)).attribute(px(), target=0))


@case()
def image_all_spatial_modes_and_single_head_finite():
    for kw in ({"spatial": "cosine_per_head"}, {"spatial": "attention"}, {"spatial": "uniform"},
               {"single_head": True}):
        a = ge(**kw).attribute(px(), target=0)
        assert a.shape == (2, 1, 4, 4) and torch.isfinite(a).all() and (a >= 0).all(), kw


@case()
def image_two_layers_sum_the_per_layer_maps():
    layers = list(hf().vision_model.encoder.layers)
    both = ImageGradECLIP(sim(), layers).attribute(px(), target=0)
    one = sum(ImageGradECLIP(sim(), lay).attribute(px(), target=0) for lay in layers)
    torch.testing.assert_close(both, one, rtol=1e-4, atol=1e-6)


@case()
def image_bf16_model_gives_finite_maps():
    m = tiny_clip(dtype=torch.bfloat16)
    ids, mask = text_batch()
    s = ImageTextSimilarity(m, input_ids=ids, attention_mask=mask)
    a = ImageGradECLIP(s, m.vision_model.encoder.layers[-1]).attribute(px().bfloat16(), target=0)
    assert torch.isfinite(a.float()).all() and hook_count(m) == 0


# ---- forward functions ------------------------------------------------------------------------

@case(ValueError, r"vocabulary")
def forward_ids_outside_vocabulary():
    ImageTextSimilarity(hf(), input_ids=torch.tensor([[BOS, 5, 99, EOS]]))


@case(ValueError, r"vocabulary|negative|outside")
def forward_negative_ids():
    ImageTextSimilarity(hf(), input_ids=torch.tensor([[BOS, -5, 6, EOS]]))


@case(TypeError, r"input_ids must be integer token ids")
def forward_float_ids():
    ImageTextSimilarity(hf(), input_ids=torch.tensor([[BOS, 5.0, 6.0, EOS]]))


@case(ValueError, r"input_ids|text_embeds|give")
def forward_no_text_at_all():
    ImageTextSimilarity(hf())


@case(ValueError, r"attention_mask|shape")
def forward_mask_of_another_shape():
    ids, mask = text_batch()
    ImageTextSimilarity(hf(), input_ids=ids, attention_mask=mask[:, :4])


@case(ValueError, r"zero or not finite")
def forward_zero_text_embeds():
    ImageTextSimilarity(hf(), text_embeds=torch.zeros(1, 16))


@case(ValueError, r"E = 16")
def forward_text_embeds_wrong_width():
    ImageTextSimilarity(hf(), text_embeds=torch.ones(2, 8))


@case()
def forward_text_embeds_equal_the_ids_path():
    ids, mask = text_batch()
    with torch.no_grad():
        e = hf().get_text_features(input_ids=ids, attention_mask=mask)
    e = getattr(e, "pooler_output", e)
    a = ImageGradECLIP(ImageTextSimilarity(hf(), text_embeds=e), last()).attribute(px(), target=1)
    torch.testing.assert_close(a, ge().attribute(px(), target=1), rtol=1e-4, atol=1e-6)


@case(TypeError, r"CLIP|model|vision")
def forward_wraps_a_linear_layer():
    ImageTextSimilarity(torch.nn.Linear(3, 3), input_ids=torch.tensor([[BOS, 5, EOS]]))


@case(ValueError, r"NaN or Inf|finite")
def text_side_nan_pixels():
    x = px()
    x[0, 0, 0, 0] = float("nan")
    ids, mask = text_batch()
    TextGradECLIP(TextImageSimilarity(hf(), pixel_values=x), text_layers()).attribute(
        ids, target=0, additional_forward_args=(mask,))


@case(ValueError, r"zero or not finite")
def text_side_zero_image_embeds():
    TextImageSimilarity(hf(), image_embeds=torch.zeros(2, 16))


# ---- text explainer ---------------------------------------------------------------------------

def gt(**kw):
    return TextGradECLIP(tsim(), text_layers(), **kw)


@case()
def text_pad_sos_eos_are_zero():
    ids, mask = text_batch()
    a = gt().attribute(ids, target=0, additional_forward_args=(mask,), relu_attributions=False)
    eos = (ids == EOS).int().argmax(1)
    for i in range(ids.shape[0]):
        assert a[i, 0] == 0 and a[i, eos[i]:].eq(0).all()
        assert a[i, 1:eos[i]].ne(0).any()


@case()
def text_left_padding_gives_zero_at_pad():
    ids = torch.tensor([[0, 0, BOS, 5, 6, EOS]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    a = gt().attribute(ids, target=0, additional_forward_args=(mask,), relu_attributions=False)
    assert a[0, :3].eq(0).all() and a[0, 5] == 0


@case(ValueError, r"attend to no token")
def text_all_zero_mask():
    ids, mask = text_batch()
    mask[0] = 0
    gt().attribute(ids, target=0, additional_forward_args=(mask,))


@case(ValueError, r"vocabulary")
def text_ids_outside_vocabulary():
    gt().attribute(torch.tensor([[BOS, 5, 60, EOS]]), target=0)


@case(IndexError, r"target|out of range|range")
def text_target_too_large():
    ids, mask = text_batch()
    gt().attribute(ids, target=5, additional_forward_args=(mask,))


@case()
def text_attribute_all_equals_each_target():
    ids, mask = text_batch()
    g = gt()
    allm = g.attribute_all(ids, additional_forward_args=(mask,))
    for t in range(2):
        torch.testing.assert_close(allm[:, t], g.attribute(ids, target=t, additional_forward_args=(mask,)),
                                   rtol=1e-4, atol=1e-6)


@case(ValueError, r"have no EOS token")
def forward_ids_without_eos():
    ImageTextSimilarity(hf(), input_ids=torch.tensor([[BOS, 5, 6, 7]]))


@case(ValueError, r"max_position_embeddings")
def forward_ids_longer_than_the_positions():
    ImageTextSimilarity(hf(), input_ids=torch.tensor([[BOS] + [5] * 20 + [EOS]]))


@case(ValueError, r"T >= 1")
def forward_no_texts():
    ImageTextSimilarity(hf(), input_ids=torch.zeros(0, 4, dtype=torch.long))


@case(ValueError, r"must have shape \(T, L\)")
def text_ids_1d():
    gt().attribute(torch.tensor([BOS, 5, 6, EOS]), target=0)


@case(ValueError, r"must have the shape of input_ids")
def text_mask_of_another_shape():
    ids, mask = text_batch()
    gt().attribute(ids, target=0, additional_forward_args=(mask[:, :3],))


@case()
def text_bool_float_and_long_masks_agree():
    ids, mask = text_batch()
    want = gt().attribute(ids, target=0, additional_forward_args=(mask,))
    for m in (mask.bool(), mask.float()):
        torch.testing.assert_close(gt().attribute(ids, target=0, additional_forward_args=(m,)), want)


@case(ValueError, r"EOS|eos|end")
def text_without_eos():
    ids = torch.tensor([[BOS, 5, 6, 7]])
    gt().attribute(ids, target=0)


@case(ValueError, r"spatial must be one of")
def text_unknown_spatial():
    gt(spatial="attn")


@case()
def text_single_head_runs_and_restores():
    ids, mask = text_batch()
    a = gt(single_head=True).attribute(ids, target=0, additional_forward_args=(mask,))
    assert torch.isfinite(a).all()


# ---- open_clip / OpenAI layout (nn.MultiheadAttention) ----------------------------------------

def oc_ge():
    m = oc()
    return ImageGradECLIP(EncoderImageTextSimilarity(m, tokens()), m.visual.transformer.resblocks[-1])


@case()
def mha_map_and_fast_path_restored():
    a = oc_ge().attribute(px(), target=0)
    assert a.shape == (2, 1, 4, 4) and torch.isfinite(a).all()


@case(ValueError, r"NaN or Inf")
def mha_nan_pixels_leave_fast_path_on():
    x = px()
    x[0, 0, 0, 0] = float("nan")
    oc_ge().attribute(x, target=0)


@case(IndexError, r"target|out of range|range")
def mha_target_out_of_range():
    oc_ge().attribute(px(), target=7)


@case(TypeError, r"EncoderImageTextSimilarity")
def mha_raw_model_as_forward():
    ImageGradECLIP(oc(), oc().visual.transformer.resblocks[-1])


# ---- baselines --------------------------------------------------------------------------------

def _baselines():
    layers = list(hf().vision_model.encoder.layers)
    return {"cls": CLSAttention(sim(), layers[-1]), "rollout": AttentionRollout(sim(), layers),
            "gradcam": TokenGradCAM(sim(), layers[-1]), "game": GAME(sim(), layers),
            "maskclip": MaskCLIP(sim(), layers[-1])}


@case()
def baselines_give_finite_maps_of_the_grid():
    for name, b in _baselines().items():
        a = b.attribute(px(), target=1)
        assert a.shape == (2, 1, 4, 4) and torch.isfinite(a).all(), name


@case(ValueError, r"NaN or Inf")
def baselines_refuse_nan_pixels():
    x = px()
    x[1, 1, 1, 1] = float("nan")
    for b in _baselines().values():
        try:
            b.attribute(x, target=0)
        except ValueError:
            continue
        raise AssertionError(f"{type(b).__name__} returned a map for NaN pixels")
    raise ValueError("NaN or Inf: all refused")


@case(TypeError, r"spatial|unexpected keyword")
def baseline_refuses_grad_eclip_options():
    CLSAttention(sim(), last(), spatial="cosine")


@case(ValueError, r"n_masks must be an int >= 1")
def rise_zero_masks():
    RISE(sim(), n_masks=0)


@case(ValueError, r"grid must be an int >= 1")
def rise_zero_grid():
    RISE(sim(), grid=0)


@case(ValueError, r"keep probability")
def rise_p_zero():
    RISE(sim(), p=0)


@case(ValueError, r"NaN or Inf")
def rise_nan_pixels():
    RISE(sim(), n_masks=4, grid=2).attribute(px(1) * float("nan"), target=0)


@case(IndexError, r"target 9 is out of range")
def rise_target_out_of_range():
    RISE(sim(), n_masks=4, grid=2).attribute(px(1), target=9)


@case(IndexError, r"target -9 is out of range")
def maskclip_target_out_of_range():
    MaskCLIP(sim(), last()).attribute(px(), target=-9)


@case(IndexError, r"target 9 is out of range")
def game_target_out_of_range():
    GAME(sim(), list(hf().vision_model.encoder.layers)).attribute(px(), target=9)


@case()
def rise_map_is_finite_and_deterministic():
    r = RISE(sim(), n_masks=20, grid=4, batch_size=8)
    a, b = r.attribute(px(1), target=0), r.attribute(px(1), target=0)
    assert torch.equal(a, b) and torch.isfinite(a).all()


# ---- metrics ----------------------------------------------------------------------------------

def _mask(n=2, side=16):
    m = torch.zeros(n, side, side, dtype=torch.bool)
    m[:, 4:9, 5:11] = True
    return m


def _map(n=2, side=16):
    a = torch.zeros(n, 1, side, side)
    a[:, 0, 6, 7] = 1.0
    return a


def _score(x):
    return torch.stack([x.mean((1, 2, 3)), x[:, :, :8].mean((1, 2, 3))], 1)


LOCAL = {"pointing": M.pointing_game, "energy": M.energy_pointing_game, "iou": M.mask_iou}


def _each_localisation(maps, masks):
    for fn in LOCAL.values():
        fn(maps, masks)


@case(ValueError, r"NaN or Inf")
def metric_nan_map_localisation():
    a = _map()
    a[0, 0, 0, 0] = float("nan")
    _each_localisation(a, _mask())


@case(ValueError, r"NaN or Inf")
def metric_inf_map_localisation():
    a = _map()
    a[1, 0, 0, 0] = float("inf")
    _each_localisation(a, _mask())


@case(ValueError, r"NaN or Inf")
def metric_nan_map_deletion():
    a = _map()
    a[0] = float("nan")
    M.deletion(_score, px(2, 16), a, 0, step=0.5)


@case(ValueError, r"NaN or Inf")
def metric_nan_map_insertion():
    a = _map()
    a[0] = float("nan")
    M.insertion(_score, px(2, 16), a, 0, step=0.5)


@case(ValueError, r"inputs hold NaN")
def metric_nan_inputs_deletion():
    x = px(2, 16)
    x[0, 0, 0, 0] = float("nan")
    M.deletion(_score, x, _map(), 0, step=0.5)


@case(ValueError, r"are empty")
def metric_empty_mask():
    m = _mask()
    m[1] = False
    _each_localisation(_map(), m)


@case(ValueError, r"only 0 and 1")
def metric_soft_mask():
    _each_localisation(_map(), 0.05 * _mask().float())


@case()
def metric_binary_float_and_int_masks_are_the_bool_mask():
    for m in (_mask().float(), _mask().int(), _mask().to(torch.uint8)):
        for fn in LOCAL.values():
            torch.testing.assert_close(fn(_map(), m).float(), fn(_map(), _mask()).float())


@case(ValueError, r"masks must be")
def metric_mask_count_mismatch():
    M.pointing_game(_map(2), _mask(3))


@case(ValueError, r"masks must be")
def metric_mask_4d():
    M.pointing_game(_map(), _mask()[:, None])


@case(TypeError, r"masks must be")
def metric_mask_numpy():
    M.pointing_game(_map(), _mask().numpy())


@case(TypeError, r"attributions must be")
def metric_map_list():
    M.pointing_game([[1.0]], _mask(1))


@case(ValueError, r"attributions must be")
def metric_map_2d():
    M.energy_pointing_game(torch.rand(2, 16), _mask())


@case(ValueError, r"tolerance must be >= 0")
def metric_negative_tolerance():
    M.pointing_game(_map(), _mask(), tolerance=-1)


@case(TypeError, r"tolerance must be an int")
def metric_float_tolerance():
    M.pointing_game(_map(), _mask(), tolerance=1.5)


@case(TypeError, r"tolerance must be an int")
def metric_bool_tolerance():
    M.pointing_game(_map(), _mask(), tolerance=True)


@case()
def metric_standard_tolerance_values():
    assert [M.standard_tolerance(s, s) for s in (7, 8, 64, 224, 448)] == [0, 1, 4, 15, 30]
    assert M.standard_tolerance(224, 1000) == 15


@case()
def metric_pointing_hits_within_tolerance_only():
    m = torch.zeros(1, 64, 64, dtype=torch.bool)
    m[0, 20:30, 20:30] = True
    a = torch.zeros(1, 1, 64, 64)
    a[0, 0, 25, 33] = 1  # 4 px right of the object
    assert M.pointing_game(a, m).tolist() == [True] and M.pointing_game(a, m, tolerance=0).tolist() == [False]
    a[0, 0, 25, 33], a[0, 0, 25, 34] = 0, 1  # 5 px
    assert M.pointing_game(a, m).tolist() == [False]


@case()
def metric_constant_map_misses_a_partial_mask():
    assert M.pointing_game(torch.ones(2, 1, 16, 16), _mask(), tolerance=0).tolist() == [False, False]


@case()
def metric_energy_of_a_non_positive_map_is_zero():
    assert M.energy_pointing_game(-torch.rand(2, 1, 16, 16), _mask()).tolist() == [0.0, 0.0]


@case(ValueError, r"threshold must be in \[0, 1\]")
def metric_iou_threshold_out_of_range():
    M.mask_iou(_map(), _mask(), threshold=1.5)


@case(ValueError, r"thresholds must be >= 1")
def metric_iou_zero_thresholds():
    M.mask_iou(_map(), _mask(), thresholds=0)


@case(IndexError, r"out of range .* 2 output column")
def metric_deletion_target_too_large():
    M.deletion(_score, px(2, 16), _map(), 2, step=0.5)


@case(IndexError, r"out of range")
def metric_insertion_target_too_negative():
    M.insertion(_score, px(2, 16), _map(), [0, -3], step=0.5)


@case()
def metric_deletion_negative_target_counts_from_end():
    torch.testing.assert_close(M.deletion(_score, px(2, 16), _map(), -1, step=0.5).scores,
                               M.deletion(_score, px(2, 16), _map(), 1, step=0.5).scores)


@case(TypeError, r"target must be an int")
def metric_deletion_float_target():
    M.deletion(_score, px(2, 16), _map(), 0.0, step=0.5)


@case(TypeError, r"target must be an int")
def metric_deletion_bool_target():
    M.deletion(_score, px(2, 16), _map(), torch.tensor([True, False]), step=0.5)


@case(ValueError, r"one int or 2")
def metric_deletion_target_count():
    M.deletion(_score, px(2, 16), _map(), [0, 1, 1], step=0.5)


@case(ValueError, r"step must be")
def metric_step_zero():
    M.deletion(_score, px(2, 16), _map(), 0, step=0)


@case(ValueError, r"step must be")
def metric_step_above_one():
    M.insertion(_score, px(2, 16), _map(), 0, step=2)


@case(ValueError, r"step must be")
def metric_step_nan():
    M.deletion(_score, px(2, 16), _map(), 0, step=float("nan"))


@case(ValueError, r"step must be")
def metric_step_string():
    M.deletion(_score, px(2, 16), _map(), 0, step="0.1")


@case(ValueError, r"replacement must be one of")
def metric_unknown_replacement():
    M.deletion(_score, px(2, 16), _map(), 0, step=0.5, replacement="zeros")


@case(ValueError, r"batch_size")
def metric_zero_batch_size():
    M.deletion(_score, px(2, 16), _map(), 0, step=0.5, batch_size=0)


@case(ValueError, r"images \(N, C, H, W\)")
def metric_inputs_3d():
    M.deletion(_score, torch.rand(3, 16, 16), _map(1), 0, step=0.5)


@case(ValueError, r"one map per input")
def metric_map_count_mismatch():
    M.deletion(_score, px(2, 16), _map(3), 0, step=0.5)


@case()
def metric_deletion_endpoints_are_the_intact_and_replaced_scores():
    x = px(2, 16)
    d = M.deletion(_score, x, _map(), 0, step=0.25, replacement="black")
    torch.testing.assert_close(d.scores[:, 0], _score(x)[:, 0])
    torch.testing.assert_close(d.scores[:, -1], _score(x.amin((1, 2, 3), keepdim=True).expand_as(x))[:, 0])


def _words():
    ids = torch.tensor([[1, 5, 7, 2], [1, 6, 2, 0]])
    words = torch.tensor([[False, True, True, False], [False, True, False, False]])
    return ids, words, torch.tensor([[0.0, 1.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]])


def _count(ids):
    return (ids == 7).float().sum(1, keepdim=True)


@case(ValueError, r"NaN or Inf")
def metric_word_deletion_nan():
    ids, words, a = _words()
    a[0, 1] = float("nan")
    M.word_deletion(_count, ids, a, 0, replacement_id=0, words=words)


@case(ValueError, r"no word position")
def metric_word_deletion_text_without_words():
    ids, words, a = _words()
    words[1] = False
    M.word_deletion(_count, ids, a, 0, replacement_id=0, words=words)


@case(ValueError, r"bool mask")
def metric_word_deletion_float_words():
    ids, words, a = _words()
    M.word_deletion(_count, ids, a, 0, replacement_id=0, words=words.float())


@case(IndexError, r"out of range")
def metric_word_deletion_target_out_of_range():
    ids, words, a = _words()
    M.word_insertion(_count, ids, a, 1, replacement_id=0, words=words)


@case(ValueError, r"same shape")
def metric_word_deletion_shape_mismatch():
    ids, words, a = _words()
    M.word_deletion(_count, ids, a[:, :3], 0, replacement_id=0, words=words)


@case()
def metric_word_deletion_removes_the_key_word_first():
    ids, words, a = _words()
    d = M.word_deletion(_count, ids[:1], a[:1], 0, replacement_id=0, words=words[:1])
    assert d.scores[0, 0] == 1 and d.scores[0, -1] == 0


# ---- failures inside the forward, reuse after errors, threads ----------------------------------

@case(RuntimeError, r"boom")
def forward_that_raises_after_the_model_ran():
    s = sim()

    def f(x):
        s(x)
        raise RuntimeError("boom")

    ImageGradECLIP(f, last(), patch_size=8).attribute(px(), target=0)


@case(RuntimeError, r"boom")
def mha_forward_that_raises_leaves_fast_path_on():
    s = EncoderImageTextSimilarity(oc(), tokens())

    def f(x):
        s(x)
        raise RuntimeError("boom")

    ImageGradECLIP(f, oc().visual.transformer.resblocks[-1], patch_size=8).attribute(px(), target=0)


@case()
def explainer_reused_after_an_error_gives_the_same_map():
    g, x = ge(), px()
    want = g.attribute(x, target=1)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        g.attribute(bad, target=1)
    with pytest.raises(IndexError):
        g.attribute(x, target=5)
    assert torch.equal(g.attribute(x, target=1), want)


@case()
def threads_image_and_text_explainers_on_one_model():
    import threading

    ids, mask = text_batch()
    gi, gtx, x = ge(), gt(), px()
    want_i = gi.attribute(x, target=0)
    want_t = gtx.attribute(ids, target=1, additional_forward_args=(mask,))
    got, errors = [], []

    def run(f):
        try:
            for _ in range(3):
                got.append(f())
        except Exception as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(lambda: ("i", gi.attribute(x, target=0)),)),
               threading.Thread(target=run, args=(
                   lambda: ("t", gtx.attribute(ids, target=1, additional_forward_args=(mask,))),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 6
    for kind, m in got:
        assert torch.equal(m, want_i if kind == "i" else want_t)


@case()
def threads_one_failing_one_working_on_mha():
    import threading

    g, x = oc_ge(), px()
    want = g.attribute(x, target=0)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    out, errs = [], []

    def good():
        for _ in range(3):
            out.append(g.attribute(x, target=0))

    def failing():
        for _ in range(3):
            try:
                g.attribute(bad, target=0)
            except ValueError as e:
                errs.append(e)

    ts = [threading.Thread(target=good), threading.Thread(target=failing)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(errs) == 3 and len(out) == 3 and all(torch.equal(o, want) for o in out)


# ---- metrics: more shapes ---------------------------------------------------------------------

@case()
def metric_pointing_non_square_uses_the_shorter_side():
    m = torch.zeros(1, 48, 96, dtype=torch.bool)
    m[0, 10:20, 10:20] = True
    a = torch.zeros(1, 1, 48, 96)
    a[0, 0, 15, 23] = 1  # 4 px right: standard tolerance round(15 * 48 / 224) = 3
    assert M.pointing_game(a, m).tolist() == [False] and M.pointing_game(a, m, tolerance=4).tolist() == [True]


@case()
def metric_deletion_with_a_1d_score():
    x = px(2, 16)
    d = M.deletion(lambda z: z.mean((1, 2, 3)), x, _map(), 0, step=0.5)
    torch.testing.assert_close(d.scores[:, 0], x.mean((1, 2, 3)))


@case(IndexError, r"1 output column")
def metric_deletion_1d_score_target_1():
    M.deletion(lambda z: z.mean((1, 2, 3)), px(2, 16), _map(), 1, step=0.5)


@case()
def metric_low_resolution_map_is_upsampled():
    low = torch.zeros(2, 1, 4, 4)
    low[:, 0, 1, 2] = 1  # the cell over rows 4-7, columns 8-11 of 16 px: inside the object
    assert M.pointing_game(low, _mask(), tolerance=0).tolist() == [True, True]


@pytest.mark.parametrize("fn, err, match", API)
def test_api_case(fn, err, match):
    before = _state()
    if err is None:
        fn()
    else:
        with pytest.raises(err, match=match):
            fn()
    assert _state() == before, "the case left the models changed (hooks, flags or the MHA fast path)"


# ---- command line -----------------------------------------------------------------------------

def _files(tmp_path):
    """A good image, a text file, a 16-bit PNG, a truncated JPEG, an empty prompt file, a file."""
    from captum_gradeclip.shapes import render_scene

    render_scene(seed=1).image.save(tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(tmp_path / "g16.png")
    render_scene(seed=2).image.resize((200, 200)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "noimgs").mkdir()
    render_scene(seed=3).image.save(tmp_path / "imgs" / "a.png")
    (tmp_path / "prompts.txt").write_text("a red circle\n")
    (tmp_path / "zero.png").write_bytes(b"")


CLI = [
    (["explain", "{t}/nope.png", "--text", "x"], "image file not found"),
    (["explain", "{t}/imgs", "--text", "x"], "image file not found"),
    (["explain", "{t}/notes.txt", "--text", "x", "--out", "{t}/o.png"], "cannot read"),
    (["explain", "{t}/zero.png", "--text", "x", "--out", "{t}/o.png"], "cannot read"),
    (["explain", "{t}/t.jpg", "--text", "x", "--out", "{t}/o.png"], "cannot read"),
    (["explain", "{t}/ok.png"], "at least one --text"),
    (["explain", "{t}/ok.png", "--text", ""], "is empty"),
    (["explain", "{t}/ok.png", "--text", "x", "--text", "\t"], "--text number 2 is empty"),
    (["explain", "{t}/ok.png", "--text", "x", "--out", "{t}/notes.txt/o.png"], "a file, not a folder"),
    (["explain", "{t}/ok.png", "--text", "x", "--out", "{t}/imgs"], "must be a file name"),
    (["explain", "{t}/ok.png", "--text", "x", "--out", "{t}/o.bmpx"], "cannot write a .bmpx figure"),
    (["explain", "{t}/ok.png", "--text", "x", "--model", "m", "--open-clip", "RN50"], "not both"),
    (["explain", "{t}/ok.png", "--text", "x", "--model", "{t}/nomodel", "--out", "{t}/o.png"],
     "could not load CLIP model"),
    (["demo", "--out", "{t}/notes.txt/d.png"], "a file, not a folder"),
    (["demo", "--out", "{t}/d.nope"], "cannot write a .nope figure"),
    (["benchmark", "--step", "0", "--out-dir", "{t}/b"], "--step must be"),
    (["benchmark", "--step", "-0.1", "--out-dir", "{t}/b"], "--step must be"),
    (["benchmark", "--step", "1.01", "--out-dir", "{t}/b"], "--step must be"),
    (["benchmark", "--step", "nan", "--out-dir", "{t}/b"], "--step must be"),
    (["benchmark", "--step", "inf", "--out-dir", "{t}/b"], "--step must be"),
    (["benchmark", "--n", "0", "--out-dir", "{t}/b"], "--n must be >= 1"),
    (["benchmark", "--n", "-5", "--out-dir", "{t}/b"], "--n must be >= 1"),
    (["benchmark", "--batch", "0", "--out-dir", "{t}/b"], "--batch must be >= 1"),
    (["benchmark", "--examples", "-2", "--out-dir", "{t}/b"], "--examples must be >= 0"),
    (["benchmark", "--out-dir", "{t}/notes.txt"], "is a file, not a folder"),
    (["benchmark", "--out-dir", "{t}/notes.txt/sub"], "a file, not a folder"),
    (["benchmark", "--images", "{t}/imgs", "--out-dir", "{t}/b"], "go together"),
    (["benchmark", "--prompts", "{t}/prompts.txt", "--out-dir", "{t}/b"], "go together"),
    (["benchmark", "--images", "{t}/nodir", "--prompts", "{t}/prompts.txt", "--out-dir", "{t}/b"],
     "must be a folder"),
    (["benchmark", "--images", "{t}/noimgs", "--prompts", "{t}/prompts.txt", "--out-dir", "{t}/b"], "no images"),
    (["benchmark", "--images", "{t}/imgs", "--prompts", "{t}/empty.txt", "--out-dir", "{t}/b"], "holds no prompt"),
    (["benchmark", "--images", "{t}/imgs", "--prompts", "{t}/bin.txt", "--out-dir", "{t}/b"], "cannot read --prompts"),
    (["benchmark", "--images", "{t}/imgs", "--prompts", "{t}/nope.txt", "--out-dir", "{t}/b"], "--prompts must be"),
    (["benchmark", "--open-clip", "RN50", "--out-dir", "{t}/b"], "--open-clip runs the folder benchmark"),
    (["benchmark", "--model", "m", "--open-clip", "RN50", "--images", "{t}/imgs", "--prompts",
      "{t}/prompts.txt", "--out-dir", "{t}/b"], "not both"),
]


@pytest.mark.parametrize("argv, words", CLI, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in enumerate(CLI)])
def test_cli_case(tmp_path, capsys, monkeypatch, argv, words):
    """Each ends before any model is loaded (except a model that cannot be loaded), in one line."""
    from captum_gradeclip import models
    from captum_gradeclip.cli import main

    _files(tmp_path)
    if "could not load" not in words:
        def boom(*a, **k):
            raise AssertionError("a model was loaded before the arguments were checked")

        monkeypatch.setattr(models, "load", boom)
        monkeypatch.setattr(models, "load_shapes", boom)
    assert main([a.format(t=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("captum-gradeclip: error: ") and words in err[-1], err
    assert len([e for e in err if "error" in e]) == 1, err


@pytest.mark.parametrize("argv", [["benchmark", "--replacement", "zeros"], ["benchmark", "--n", "x"],
                                  ["explain"], ["nope"], ["benchmark", "--step"]])
def test_cli_argparse_errors_exit_2(argv, capsys):
    from captum_gradeclip.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


@pytest.mark.parametrize("name, want", [("g16.png", (40000 / 257)), ("ok.png", None)])
def test_cli_image_reading(tmp_path, name, want):
    from captum_gradeclip._io import open_image

    _files(tmp_path)
    a = np.asarray(open_image(str(tmp_path / name)))
    assert a.dtype == np.uint8 and a.shape[-1] == 3
    if want is not None:
        assert (a == round(want)).all()


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "CMYK", "1", "I;16", "F"])
def test_cli_reads_every_pil_mode_as_rgb(tmp_path, mode):
    from captum_gradeclip._io import open_image

    base = Image.new("RGB", (20, 10), (200, 100, 50))
    if mode == "I;16":
        im = Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16))
    elif mode == "F":
        im = Image.fromarray(np.full((10, 20), 100.0, dtype=np.float32))
    else:
        im = base.convert(mode)
    p = tmp_path / ("x.tif" if mode in ("CMYK", "F") else "x.png")
    im.save(p)
    out = open_image(str(p))
    assert out.mode == "RGB" and out.size == (20, 10)
    if mode == "I;16":
        assert np.asarray(out).min() == 255
    if mode == "F":
        assert (np.asarray(out) == 100).all()
