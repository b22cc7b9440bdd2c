"""Metrics on hand-made maps with known answers."""

import pytest
import torch

from captum_gradeclip.metrics import (
    deletion,
    energy_pointing_game,
    insertion,
    mask_iou,
    pointing_game,
    word_deletion,
    word_insertion,
)


class RegionScore(torch.nn.Module):
    """Score = mean brightness inside a fixed region (column 0), and outside it (column 1)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("m", mask.float())

    def forward(self, x):
        inside = (x.mean(1) * self.m).flatten(1).sum(1) / self.m.sum()
        outside = (x.mean(1) * (1 - self.m)).flatten(1).sum(1) / (1 - self.m).sum()
        return torch.stack([inside, outside], 1)


@pytest.fixture
def scene():
    torch.manual_seed(0)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:9, 5:11] = True
    x = 0.2 * torch.rand(2, 3, 16, 16)
    x[:, :, mask] += 1.0
    perfect = mask.float().expand(2, 1, 16, 16).clone() + 0.01 * torch.rand(2, 1, 16, 16)
    random = torch.rand(2, 1, 16, 16)
    inverted = 1 - perfect
    return mask, x, {"perfect": perfect, "random": random, "inverted": inverted}


def test_pointing_game_by_hand():
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 1, 2] = 5.0
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, 1, 2] = True
    assert pointing_game(a, m).tolist() == [True]
    m2 = torch.zeros(1, 4, 4, dtype=torch.bool)
    m2[0, 3, 3] = True
    assert pointing_game(a, m2).tolist() == [False]
    m3 = torch.zeros(1, 4, 4, dtype=torch.bool)
    m3[0, 2, 3] = True  # one pixel away (diagonal)
    assert pointing_game(a, m3, tolerance=1).tolist() == [True]
    # a constant map does not hit a partial mask
    assert pointing_game(torch.ones(1, 1, 4, 4), m).tolist() == [False]
    # low-resolution maps are upsampled to the mask
    low = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    right_top = torch.zeros(1, 8, 8, dtype=torch.bool)
    right_top[0, :4, 4:] = True
    assert pointing_game(low, right_top).tolist() == [True]


def test_energy_and_iou_by_hand():
    a = torch.tensor([[[[3.0, 1.0], [0.0, -2.0]]]])
    m = torch.tensor([[[True, False], [False, True]]])
    torch.testing.assert_close(energy_pointing_game(a, m), torch.tensor([0.75]))
    # normalised map (a + 2) / 5 = [[1, .6], [.4, 0]]; threshold 0.5 -> {(0,0), (0,1)}: IoU 1/3
    torch.testing.assert_close(mask_iou(a, m, threshold=0.5), torch.tensor([1 / 3]))
    assert mask_iou(m[:, None].float(), m).item() == 1.0


def test_perfect_beats_random_beats_inverted(scene):
    mask, x, maps = scene
    f = RegionScore(mask)
    masks = mask.expand(2, 16, 16)
    res = {}
    for name, a in maps.items():
        res[name] = dict(
            pointing=pointing_game(a, masks).float().mean().item(),
            energy=energy_pointing_game(a, masks).mean().item(),
            iou=mask_iou(a, masks).mean().item(),
            deletion=deletion(f, x, a, 0, step=0.02).auc.mean().item(),
            insertion=insertion(f, x, a, 0, step=0.02).auc.mean().item(),
        )
    for metric in ("pointing", "energy", "iou", "insertion"):
        assert res["perfect"][metric] >= res["random"][metric] >= res["inverted"][metric], (metric, res)
    assert res["perfect"]["deletion"] < res["random"]["deletion"] < res["inverted"]["deletion"], res
    assert res["perfect"]["insertion"] > res["inverted"]["insertion"]
    assert res["perfect"]["pointing"] == 1.0 and res["inverted"]["pointing"] == 0.0


@pytest.mark.parametrize("replacement", ["noise", "black", "blur", "mean"])
def test_curve_shapes_and_endpoints(scene, replacement):
    mask, x, maps = scene
    f = RegionScore(mask)
    d = deletion(f, x, maps["perfect"], [0, 0], step=0.1, replacement=replacement, accuracy=True, batch_size=7)
    assert d.scores.shape == (2, len(d.fractions)) and d.fractions[0] == 0 and d.fractions[-1] == 1
    torch.testing.assert_close(d.scores[:, 0], f(x)[:, 0])  # intact first
    i = insertion(f, x, maps["perfect"], 0, step=0.1, replacement=replacement, batch_size=5)
    torch.testing.assert_close(i.scores[:, -1], f(x)[:, 0])  # whole image last
    assert d.accuracy is not None and d.accuracy.shape == d.scores.shape


def test_metric_errors(scene):
    mask, x, maps = scene
    with pytest.raises(ValueError, match="replacement must be one of"):
        deletion(RegionScore(mask), x, maps["perfect"], 0, replacement="zeros")
    with pytest.raises(ValueError, match="step must be"):
        deletion(RegionScore(mask), x, maps["perfect"], 0, step=0)
    with pytest.raises(ValueError, match="masks must be"):
        pointing_game(maps["perfect"], mask.expand(3, 16, 16))


def test_word_deletion_ranks_the_right_word():
    key = 7

    def f(ids):  # score: is the key word still there?
        return (ids == key).any(1).float()[:, None]

    ids = torch.tensor([[1, 5, key, 6, 9]])
    words = torch.tensor([[False, True, True, True, False]])
    good = torch.tensor([[0.0, 0.1, 1.0, 0.2, 0.0]])
    bad = torch.tensor([[0.0, 1.0, 0.0, 0.5, 0.0]])
    dg = word_deletion(f, ids, good, 0, replacement_id=0, words=words)
    db = word_deletion(f, ids, bad, 0, replacement_id=0, words=words)
    assert dg.auc.item() < db.auc.item()
    ig = word_insertion(f, ids, good, 0, replacement_id=0, words=words)
    ib = word_insertion(f, ids, bad, 0, replacement_id=0, words=words)
    assert ig.auc.item() > ib.auc.item()
