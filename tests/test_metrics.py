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
    m3[0, 2, 3] = True  # one pixel away diagonally: distance sqrt(2)
    assert pointing_game(a, m3, tolerance=1).tolist() == [False]  # a disc, not a square
    assert pointing_game(a, m3, tolerance=2).tolist() == [True]
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


def test_standard_pointing_game_is_15_px_at_224_scaled_to_the_shorter_side():
    from captum_gradeclip.metrics import standard_tolerance

    assert standard_tolerance(224, 224) == 15 and standard_tolerance(64, 64) == 4
    assert standard_tolerance(448, 300) == round(15 * 300 / 224) == 20
    # a peak d pixels left of a one-pixel object on a 64 px image: hit up to 4 px (the default)
    m = torch.zeros(1, 64, 64, dtype=torch.bool)
    m[0, 30, 40] = True
    for d, hit in [(0, True), (3, True), (4, True), (5, False)]:
        a = torch.zeros(1, 1, 64, 64)
        a[0, 0, 30, 40 - d] = 1.0
        assert pointing_game(a, m).tolist() == [hit], d
        assert pointing_game(a, m, tolerance=0).tolist() == [d == 0], d
    # the disc: (3, 3) away is 4.24 px, a miss at 4 px; (0, 4) a hit
    a = torch.zeros(1, 1, 64, 64)
    a[0, 0, 33, 43] = 1.0
    assert pointing_game(a, m).tolist() == [False]
    assert pointing_game(a, m, tolerance=5).tolist() == [True]


def _f2(x):
    return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_metrics_reject_non_finite_maps(scene, bad):
    mask, x, maps = scene
    a = maps["perfect"].clone()
    a[1, 0, 3, 3] = bad
    masks = mask.expand(2, 16, 16)
    for metric in (pointing_game, energy_pointing_game, mask_iou):
        with pytest.raises(ValueError, match=r"NaN or Inf in example\(s\) \[1\]"):
            metric(a, masks)
    for curve in (deletion, insertion):
        with pytest.raises(ValueError, match="NaN or Inf"):
            curve(_f2, x, a, 0, step=0.25)
    xs = x.clone()
    xs[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="inputs hold NaN or Inf"):
        deletion(_f2, xs, maps["perfect"], 0, step=0.25)
    ids = torch.tensor([[1, 5, 7, 2]])
    words = torch.tensor([[False, True, True, False]])
    with pytest.raises(ValueError, match="NaN or Inf"):
        word_deletion(lambda i: i.float().sum(1, keepdim=True), ids, torch.tensor([[0, bad, 1, 0]]), 0,
                      replacement_id=0, words=words)


def test_metrics_reject_empty_and_soft_masks(scene):
    mask, x, maps = scene
    empty = mask.expand(2, 16, 16).clone()
    empty[1] = False
    for metric in (pointing_game, energy_pointing_game, mask_iou):
        with pytest.raises(ValueError, match=r"mask\(s\) \[1\] are empty"):
            metric(maps["perfect"], empty)
        with pytest.raises(ValueError, match="only 0 and 1"):
            metric(maps["perfect"], 0.05 * mask.expand(2, 16, 16).float())
    # exact 0/1 floats and ints are read as the bool mask
    b = mask.expand(2, 16, 16)
    for m in (b.float(), b.long()):
        assert pointing_game(maps["perfect"], m).tolist() == pointing_game(maps["perfect"], b).tolist()
        torch.testing.assert_close(energy_pointing_game(maps["perfect"], m), energy_pointing_game(maps["perfect"], b))


def test_metric_targets_are_checked(scene):
    mask, x, maps = scene
    a = maps["perfect"]
    for curve in (deletion, insertion):
        with pytest.raises(IndexError, match=r"target \[2\] out of range .* 2 output column"):
            curve(_f2, x, a, 2, step=0.25)
        with pytest.raises(IndexError, match="out of range"):
            curve(_f2, x, a, [0, -3], step=0.25)
        with pytest.raises(TypeError, match="int"):
            curve(_f2, x, a, torch.tensor([0.0, 1.0]), step=0.25)
        with pytest.raises(ValueError, match="one int or 2"):
            curve(_f2, x, a, [0, 1, 0], step=0.25)
    # negative targets count from the end, as the explainers' do
    torch.testing.assert_close(deletion(_f2, x, a, -1, step=0.25).scores, deletion(_f2, x, a, 1, step=0.25).scores)
    ids = torch.tensor([[1, 5, 7, 2]])
    words = torch.tensor([[False, True, True, False]])
    att = torch.tensor([[0.0, 1.0, 0.5, 0.0]])
    with pytest.raises(IndexError, match="out of range"):
        word_deletion(lambda i: i.float().sum(1, keepdim=True), ids, att, 1, replacement_id=0, words=words)
    with pytest.raises(ValueError, match="no word position"):
        word_deletion(lambda i: i.float().sum(1, keepdim=True), ids, att, 0, replacement_id=0,
                      words=torch.zeros_like(words))


@pytest.mark.parametrize("step", [0, -0.1, 1.5, float("nan")])
def test_curves_reject_steps_outside_0_1(scene, step):
    mask, x, maps = scene
    with pytest.raises(ValueError, match="step must be"):
        deletion(_f2, x, maps["perfect"], 0, step=step)
