"""Hand-derived numbers on a one-head toy, and the pure functions."""

import math

import pytest
import torch
from torch import nn

from captum_gradeclip import ImageGradECLIP
from captum_gradeclip.functional import spatial_weights, token_map


class ToyAttention(nn.Module):
    """One head, identity projections, no bias: q = k = v = x, o = softmax(x x^T) x."""

    def __init__(self):
        super().__init__()
        self.num_heads = 1
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(2, 2, bias=False) for _ in range(4))
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.eye_(lin.weight)

    def forward(self, hidden_states):
        q, k, v = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        a = (q @ k.transpose(-1, -2) / math.sqrt(2)).softmax(-1)
        return self.out_proj(a @ v)


class Toy(nn.Module):
    """pixel_values (N, 2, 1, 2): two 1x1 patches with 2 channels; CLS = (1, 0); S = u . out_cls."""

    def __init__(self):
        super().__init__()
        self.attn = ToyAttention()
        self.register_buffer("u", torch.tensor([2.0, 3.0]))

    def forward(self, pixel_values):
        patches = pixel_values.flatten(2).transpose(1, 2)  # (N, 2, 2)
        cls = torch.tensor([1.0, 0.0]).expand(patches.shape[0], 1, 2)
        out = self.attn(torch.cat([cls, patches], 1))
        return out[:, 0] @ self.u[:, None]  # (N, 1)


def test_hand_derived_toy():
    # tokens: cls (1,0), x1 = (1,1), x2 = (0,1); w = u = (2,3) since out_proj = I.
    # cos(q_cls, k1) = 1/sqrt(2), cos(q_cls, k2) = 0 -> min-max over patches: lambda = (1, 0)
    # H = relu(lambda_i * v_i . u) = (1 * 5, 0 * 3) = (5, 0); uniform: (5, 3)
    x = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])  # (1, 2, 1, 2): channel 0 = (1, 0), channel 1 = (1, 1)
    toy = Toy()
    cos_map = ImageGradECLIP(toy, toy.attn, patch_size=1).attribute(x, target=0)
    assert cos_map.shape == (1, 1, 1, 2)
    torch.testing.assert_close(cos_map, torch.tensor([[[[5.0, 0.0]]]]))
    uni = ImageGradECLIP(toy, toy.attn, patch_size=1, spatial="uniform").attribute(x, target=0)
    torch.testing.assert_close(uni, torch.tensor([[[[5.0, 3.0]]]]))
    # attention: softmax over (cls, x1, x2) of q_cls . k / sqrt(2) = (1, 1, 0) / sqrt(2)
    e = torch.exp(torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    a = e / e.sum()
    att = ImageGradECLIP(toy, toy.attn, patch_size=1, spatial="attention").attribute(x, target=0)
    torch.testing.assert_close(att, torch.tensor([[[[a[1] * 5, a[2] * 3]]]]))


def test_toy_signed_map_keeps_negatives():
    toy = Toy()
    toy.u.copy_(torch.tensor([-2.0, -3.0]))
    x = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])
    g = ImageGradECLIP(toy, toy.attn, patch_size=1, spatial="uniform")
    torch.testing.assert_close(g.attribute(x, target=0, relu_attributions=False), torch.tensor([[[[-5.0, -3.0]]]]))
    torch.testing.assert_close(g.attribute(x, target=0), torch.zeros(1, 1, 1, 2))


def test_minmax_constant_row_and_unscored_zero():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [5.0, 0.0]]])  # all cos = 1
    scored = torch.tensor([[False, True, True]])
    lam = spatial_weights(query=q, keys=k, scored=scored, attended=torch.ones_like(scored), mode="cosine", num_heads=1)
    torch.testing.assert_close(lam, torch.tensor([[0.0, 1.0, 1.0]]))


def test_per_head_weights_apply_to_their_channels():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    v = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    lam = torch.tensor([[[1.0], [0.5]]])  # head 0 weight 1, head 1 weight 0.5
    torch.testing.assert_close(token_map(weights=w, values=v, spatial=lam), torch.tensor([[1 + 2 + 0.5 * (3 + 4)]]))


def test_unknown_spatial_mode():
    with pytest.raises(ValueError, match="spatial must be one of"):
        spatial_weights(query=torch.zeros(1, 2), keys=torch.zeros(1, 1, 2), scored=torch.ones(1, 1, dtype=torch.bool),
                        attended=torch.ones(1, 1, dtype=torch.bool), mode="nope", num_heads=1)
